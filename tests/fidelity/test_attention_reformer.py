"""Reformer's reversible layers and attention, against the released mathematics (google/trax).

trax/models/reformer/reformer.py (ReformerLM, DecoderBlock) and
trax/layers/research/efficient_attention.py (SelfAttention, LSHSelfAttention, attend):

    x1 = x2 = Embedding(tokens) + AxialPositions
    for each layer:                      # ReversibleHalfResidual, Swap, HalfResidual, Swap
        y1 = x1 + Attention(LayerNorm(x2))
        y2 = x2 + FeedForward(y1)        # LayerNorm, Dense, ReLU, Dense
    logits = Dense(LayerNorm(concat(y1, y2)))            # from 2·D

Attention types cycle [local, local, LSH, local]. Local (chunk C, one chunk before, causal):
query i sees j ≤ i with ⌊i/C⌋ − ⌊j/C⌋ ≤ 1, scores q·k/√d. LSH (shared QK): keys are
length_normalized(q)/√d = q/‖q‖, scores q_i·k_j without another scale, and i sees j ≤ i when
they share a bucket argmax([qR_r, −qR_r]) in any round r. Every tensor below is written out
here from those formulas and the module's own weights; the module must agree to fp32 accuracy,
forward and backward, at sizes that are not powers of two.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import seqdsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Awkward sizes: N = 48 (3 chunks of 16, 6 axial rows of 8), 3 layers (the third is LSH).
SIZES = {"B": 2, "D": 24, "H": 3, "L": 3, "N": 48, "Cols": 8, "V": 37, "C": 16, "Nb": 6, "Drow": 8, "F": 20}


def _heads(x, h):
    b, n, d = x.shape
    return x.reshape(b, n, h, d // h).transpose(1, 2)


def _merge(y):
    b, h, n, d = y.shape
    return y.transpose(1, 2).reshape(b, n, h * d)


def _ln(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b)


def _softmax_attention(scores, allowed, v):
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


def _local(x, w, p, chunk):
    q, k, v = (_heads(x @ w[p + name].T, SIZES["H"]) for name in ("q.weight", "k.weight", "v.weight"))
    i = torch.arange(x.shape[1])
    allowed = (i[None, :] <= i[:, None]) & (i[:, None] // chunk - i[None, :] // chunk <= 1)
    y = _softmax_attention(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, allowed, v)
    return _merge(y) @ w[p + "out.weight"].T


def _lsh(x, w, p, rotations):
    qk, v = (_heads(x @ w[p + name].T, SIZES["H"]) for name in ("qk.weight", "v.weight"))
    k = qk / qk.norm(dim=-1, keepdim=True)
    i = torch.arange(x.shape[1])
    same = torch.zeros(qk.shape[:-1] + (x.shape[1],), dtype=torch.bool)
    for rot in rotations:
        proj = qk @ rot
        bucket = torch.cat([proj, -proj], -1).argmax(-1)
        same |= bucket[..., :, None] == bucket[..., None, :]
    y = _softmax_attention(qk @ k.transpose(-1, -2), same & (i[None, :] <= i[:, None]), v)
    return _merge(y) @ w[p + "out.weight"].T


def _feed_forward(x, w, p):
    h = _ln(x, w[p + "layernorm.weight"], w[p + "layernorm.bias"])
    return F.relu(h @ w[p + "ff.w1"].T + w[p + "ff.b1"]) @ w[p + "ff.w2"].T + w[p + "ff.b2"]


def reference(tokens, w, reversible: bool = True):
    """The released ReformerLM, written out; ``reversible=False`` is an ordinary pre-norm
    residual stack with the same weights (the test shows the two differ)."""
    rows, cols = w["axial_positions.rows"], w["axial_positions.cols"]
    r, c = rows.shape[0], cols.shape[1]
    axial = torch.cat([rows.expand(r, c, -1), cols.expand(r, c, -1)], -1).reshape(r * c, -1)
    x1 = x2 = w["embed.weight"][tokens] + axial
    for layer in range(SIZES["L"]):
        p = f"layers.{layer}."
        source = x2 if reversible else x1
        h = _ln(source, w[p + "layernorm.weight"], w[p + "layernorm.bias"])
        if layer % 4 == 2:
            rotations = [w[p + "lsh_block.y.lsh.rotation"], w[p + "lsh_block.y.layers.0.lsh.rotation"]]
            attention = _lsh(h, w, p + "lsh_block.", rotations)
        else:
            attention = _local(h, w, p + "local_block.", SIZES["C"])
        y1 = x1 + attention
        y2 = (x2 if reversible else y1) + _feed_forward(y1, w, p + "feed_forward.")
        x1, x2 = (y1, y2) if reversible else (y2, y2)
    out = torch.cat([x1, x2], -1)
    return _ln(out, w["layernorm.weight"], w["layernorm.bias"]) @ w["linear.weight"].T + w["linear.bias"]


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_reversible_layers_match_the_released_mathematics():
    torch.manual_seed(0)
    model = seqdsl.load(ROOT / "examples" / "models" / "reformer.seq", **SIZES)
    tokens = torch.randint(0, SIZES["V"], (SIZES["B"], SIZES["N"]))
    weights = dict(model.named_parameters())
    weights.update(dict(model.named_buffers()))
    out = model(tokens)
    ref = reference(tokens, weights)
    assert _rel(out, ref) < 1e-5
    # the test can fail: an ordinary residual stack with the same weights is far off
    assert _rel(reference(tokens, weights, reversible=False), ref) > 1e-2
    # backward: every weight's gradient agrees with autograd through the written-out model
    g = torch.randn_like(out)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, got, want):
        assert b is not None, name
        assert _rel(a, b) < 1e-4, name


def test_lsh_layers_are_2_6_10_and_local_elsewhere(checked_example):
    """The released enwik8 config: attention types cycle [local, local, LSH, local]."""
    checked = checked_example(ROOT / "examples" / "models" / "reformer.seq")
    kinds = {}
    for node in checked.mixers:
        layer = int(node.name.split(".")[1])
        kinds[layer] = "lsh" if "lsh_block" in node.name else "local"
    assert [layer for layer, kind in sorted(kinds.items()) if kind == "lsh"] == [2, 6, 10]
    assert len(kinds) == 12
