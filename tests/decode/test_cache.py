"""The KV cache's buffers (codegen/torch/decode_buffer.py): a step writes its key in place, the
buffer grows by doubling (or to prefill's ``max_tokens``), a window's never passes 2W rows, an
older state stepped again is not overwritten, and select / cat / to keep the rows exact.
Outputs against the plain softmax reference in float64 (fp32, 1e-4 relative)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="decoding needs torch")

import seqdsl  # noqa: E402
from codegen import masks as M  # noqa: E402
from codegen.softmax import step as softmax_step  # noqa: E402
from codegen.softmax.reference import softmax_reference  # noqa: E402
from codegen.softmax.torch_impl import softmax_attention  # noqa: E402
from codegen.torch import decode_buffer as buf  # noqa: E402
from codegen.torch.decode import DecodeState  # noqa: E402

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[2]
B, H, D = 2, 3, 8


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _qkv(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g) for _ in range(3)]


def _kw(mask):
    return dict(mask=mask, scale=D ** -0.5, algorithm="tiled", block=16)


def _steps(cache, q, k, v, mask, lo: int, hi: int):
    """Step positions lo … hi − 1 from ``cache``: (outputs [B, H, hi − lo, D], the cache, every
    buffer capacity seen)."""
    ys, caps = [], []
    for t in range(lo, hi):
        sl = slice(t, t + 1)
        y, cache = softmax_step.step(softmax_attention, (q[..., sl, :], k[..., sl, :], v[..., sl, :]), _kw(mask),
                                     cache, t)
        ys.append(y)
        caps.append(cache.buffers["k"].capacity)
    return torch.cat(ys, dim=-2), cache, caps


@pytest.mark.parametrize("prompt", [3, 13])
def test_the_cache_grows_across_its_capacity_in_place(prompt):
    """Prefill makes room for twice the kept rows (at least 16); steps write in place until the
    buffer is full, then copy once into one of twice the rows it must hold: outputs stay exact."""
    n = 60
    q, k, v = _qkv(n)
    mask = M.Causal(0)
    _, cache = softmax_step.prefill(softmax_attention, (q[..., :prompt, :], k[..., :prompt, :], v[..., :prompt, :]),
                                    _kw(mask))
    first = cache.buffers["k"]
    assert first.capacity == max(2 * (prompt + 1), buf.MIN_ROWS) and first.hi == prompt
    out, cache, caps = _steps(cache, q, k, v, mask, prompt, n)
    ref = softmax_reference(q.double(), k.double(), v.double(), mask, scale=D ** -0.5)[..., prompt:, :]
    assert _rel(out, ref) < TOL
    grown = sorted(set(caps))
    assert grown[0] == first.capacity and len(grown) >= 2, caps             # it crossed a boundary
    assert all(b == 2 * (a + 1) for a, b in zip(grown, grown[1:])), grown   # twice the rows kept
    assert cache["k"].shape[-2] == n and torch.equal(cache["k"], k)
    held = cache.held_nbytes()
    assert held == 2 * B * H * cache.buffers["k"].capacity * D * 4 > DecodeState({"m": cache}).used_nbytes


def test_a_step_writes_into_the_buffer_and_an_older_state_stays_valid():
    """Stepping a state writes its row in place (same storage); stepping the older state again (a
    second branch) copies instead of overwriting the first branch's row."""
    n = 12
    q, k, v = _qkv(n, seed=1)
    q2, k2, v2 = _qkv(n, seed=2)                          # another continuation from position 8
    mask = M.Causal(0)
    _, s8 = softmax_step.prefill(softmax_attention, (q[..., :8, :], k[..., :8, :], v[..., :8, :]), _kw(mask))
    ya, a9, _ = _steps(s8, q, k, v, mask, 8, 9)
    assert a9["k"].data_ptr() == s8["k"].data_ptr()                          # in place, no copy
    yb, b9, _ = _steps(s8, q2, k2, v2, mask, 8, 9)
    assert b9["k"].data_ptr() != s8["k"].data_ptr()                          # a branch: its own buffer
    ya2, a11, _ = _steps(a9, q, k, v, mask, 9, 11)                           # the first branch goes on
    ref_a = softmax_reference(q.double(), k.double(), v.double(), mask, scale=D ** -0.5)
    assert _rel(torch.cat([ya, ya2], dim=-2), ref_a[..., 8:11, :]) < TOL
    kb, vb = torch.cat([k[..., :8, :], k2[..., 8:, :]], -2), torch.cat([v[..., :8, :], v2[..., 8:, :]], -2)
    ref_b = softmax_reference(q2.double(), kb.double(), vb.double(), mask, scale=D ** -0.5)
    assert _rel(yb, ref_b[..., 8:9, :]) < TOL
    assert torch.equal(s8["k"], k[..., :8, :]) and a11["k"].shape[-2] == 11


def test_a_window_keeps_at_most_twice_its_keys():
    """causal & window(5): 4 keys kept; the buffer is copied when full, never above 2W rows."""
    n, w = 60, 5
    q, k, v = _qkv(n, seed=3)
    mask = M.And(M.Causal(0), M.Window(w))
    _, cache = softmax_step.prefill(softmax_attention, (q[..., :9, :], k[..., :9, :], v[..., :9, :]), _kw(mask))
    out, cache, caps = _steps(cache, q, k, v, mask, 9, n)
    ref = softmax_reference(q.double(), k.double(), v.double(), mask, scale=D ** -0.5)[..., 9:, :]
    assert _rel(out, ref) < TOL
    assert max(caps) <= max(2 * w, buf.MIN_ROWS) and cache["k"].shape[-2] == w - 1
    assert torch.equal(cache["k"], k[..., n - w + 1:, :])


def _model(name: str):
    small = json.loads((ROOT / "tests" / "codegen" / "small_sizes.json").read_text())
    sizes = {k: v for k, v in small[f"models/{name}.seq"].items() if k not in ("B", "N")} | {"L": 1}
    return seqdsl.load(ROOT / "examples" / "models" / f"{name}.seq", **sizes).eval(), sizes


def test_select_cat_and_to_after_growth_stay_exact():
    """A Transformer decoder's state after its cache grew: rows selected, batched again in
    another order, cast to float64 and back, keep stepping to the full forward's logits."""
    model, sizes = _model("transformer_decoder")
    n, prompt = 40, 4
    tokens = torch.randint(0, sizes["V"], (3, n), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(tokens)
    _, state = model.prefill(tokens[:, :prompt])
    caps = set()
    for t in range(prompt, 25):                                            # past the first 16 rows
        _, state = model.step(tokens[:, t], state)
        caps |= {b.capacity for part in state.values() for b in getattr(part, "buffers", {}).values()}
    assert len(caps) >= 2, caps
    assert state.nbytes > state.used_nbytes
    order = torch.tensor([2, 0, 1])
    mixed = DecodeState.cat([state.select(2), state.select(slice(0, 2))]).to(torch.float64).to(torch.float32)
    assert mixed.used_nbytes == state.used_nbytes and mixed.position == state.position
    worst = 0.0
    for t in range(25, n):
        logits, mixed = model.step(tokens[order, t], mixed)
        worst = max(worst, _rel(logits, full[order, t]))
    assert worst < TOL, worst


def test_max_tokens_makes_the_cache_once():
    """prefill(..., max_tokens=T): the cache has room for T positions and is never copied."""
    model, sizes = _model("transformer_decoder")
    tokens = torch.randint(0, sizes["V"], (1, 30), generator=torch.Generator().manual_seed(5))
    _, state = model.prefill(tokens[:, :3], max_tokens=30)
    ptrs = {p: part["k"].data_ptr() for p, part in state.items() if "k" in part}
    assert ptrs and all(part.buffers["k"].capacity == 30 for p, part in state.items() if p in ptrs)
    for t in range(3, 30):
        _, state = model.step(tokens[:, t], state)
    assert {p: state[p]["k"].data_ptr() for p in ptrs} == ptrs
    assert state.nbytes == state.used_nbytes                               # 30 positions: every row used
    with pytest.raises(ValueError, match="max_tokens"):
        model.prefill(tokens[:, :3], max_tokens=0)


def test_generate_sizes_the_cache_for_its_tokens():
    """`seqdsl.generate` prefills with max_tokens = prompt + tokens: after the last step the
    buffers hold one row more than the rows used (the last token is sampled, not stepped)."""
    _, sizes = _model("transformer_decoder")
    out = seqdsl.generate(ROOT / "examples" / "models" / "transformer_decoder.seq", "3 1 4", 5, temperature=0, **sizes)
    used_rows = len(out.prompt_ids) + out.steps                            # 3 + 4
    assert out.state_bytes_held * used_rows == out.state_bytes * (used_rows + 1)
    assert "held with the caches' spare rows" in out.summary()
