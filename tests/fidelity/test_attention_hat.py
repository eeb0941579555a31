"""HAT (hierarchical.seq) against the released structure, written out from
coastalcph/hierarchical-transformers models/hat/modelling_hat.py:

    embeddings  = LayerNorm(word + position within the segment + token type)
    HATLayer    : sentence_encoder (a RoBERTa layer) on each segment of C tokens alone;
                  when the layout has a document encoder: the segments' first tokens
                  (outputs[:, ::C]) + position_embeddings(segment index), tied across layers,
                  go through a RoBERTa layer across segments and replace the first tokens
    layout p1   : S|S|SD|...: a document encoder after every third sentence encoder
    classifier  : HATPooler(max): max over the first tokens, dense, tanh; then a linear layer
    RoBERTa layer (post-norm): x = LN(x + O(softmax(QKᵀ/√d)V)), x = LN(x + W2 gelu(W1 x))

At awkward sizes (segments of 12 tokens, 4 segments, 3 heads of 8, 3 layers: one cross-segment
layer) the module must equal this forward and backward, and differ from the same weights with
the cross-segment layer left out (so the test can fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import seqdsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"B": 2, "C": 12, "Classes": 3, "D": 24, "F": 20, "H": 3, "N": 48, "V": 50, "L": 3}


def _ln(x, w, p):
    return F.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"])


def _dense(x, w, p):
    return x @ w[p + ".weight"].T + w[p + ".bias"]


def roberta_layer(x, w, p):
    b, n, d = x.shape
    h = SIZES["H"]

    def heads(t):
        return t.reshape(b, n, h, d // h).transpose(1, 2)

    q, k, v = (heads(_dense(x, w, f"{p}.self_attention.{name}")) for name in "qkv")
    y = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, -1) @ v
    x = _ln(x + _dense(y.transpose(1, 2).reshape(b, n, d), w, f"{p}.self_attention.out"), w, f"{p}.layernorm")
    ff = F.gelu(x @ w[f"{p}.mlp.w1"].T + w[f"{p}.mlp.b1"]) @ w[f"{p}.mlp.w2"].T + w[f"{p}.mlp.b2"]
    return _ln(x + ff, w, f"{p}.layernorm_1")


def reference(tokens, w, cross_segment: bool = True):
    b, n = tokens.shape
    c = SIZES["C"]
    m = n // c
    x = w["embed.weight"][tokens].reshape(b * m, c, -1) + w["token_positions"] + w["token_type"]
    x = _ln(x, w, "embeddings")
    for layer in range(SIZES["L"]):
        x = roberta_layer(x, w, f"layers.{layer}.roberta_layer")
        if cross_segment and layer % 3 == 2:
            firsts = x[:, 0].reshape(b, m, -1) + w["segment_positions"]
            y = roberta_layer(firsts, w, f"layers.{layer}.cross_segment.y")
            x = torch.cat([y.reshape(b * m, 1, -1), x[:, 1:]], 1)
    pooled = torch.tanh(_dense(x[:, 0].reshape(b, m, -1).max(1).values, w, "pooler"))
    return _dense(pooled, w, "classifier")


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_segment_and_cross_segment_layers_match_the_released_structure():
    torch.manual_seed(0)
    model = seqdsl.load(ROOT / "examples" / "models" / "hierarchical.seq", **SIZES)
    tokens = torch.randint(0, SIZES["V"], (SIZES["B"], SIZES["N"]))
    w = dict(model.named_parameters())
    out = model(tokens)
    ref = reference(tokens, w)
    assert _rel(out, ref) < 1e-5
    assert _rel(reference(tokens, w, cross_segment=False), ref) > 1e-3
    g = torch.randn_like(out)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [w[n] for n in names]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g)
    for name, a, b in zip(names, got, want):
        # an absolute floor: a key bias has a zero gradient (softmax ignores a shift shared by
        # every key), so both sides are round-off there
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-9, name
    assert float(got[names.index("segment_positions")].abs().sum()) > 0, "segment positions are used"
