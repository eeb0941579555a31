"""softmax_attention (materialized | tiled | sdpa) against the literal reference in float64:
forward and gradients of q, k, v and of the bias tables, relative error ‖ref − out‖/‖ref‖
below 1e-4 in fp32, for every mask kind, random compositions, cross attention, biases, caps,
broadcast heads and awkward sizes (N = 63, 257; D = 60)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the softmax runtime needs torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from codegen import masks as M  # noqa: E402
from codegen.softmax import reference as R  # noqa: E402
from codegen.softmax.torch_impl import given_attention, softmax_attention  # noqa: E402

TOL = 1e-4


def rel(a, b) -> float:
    """Relative error with an absolute floor of 1 (inputs are O(1)): some gradients vanish
    exactly (a query that sees one key) and then only fp32 rounding remains."""
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1.0))


def compare(fn, ref_fn, tensors: dict, tol: float = TOL) -> None:
    """Forward and every gradient of ``fn`` (fp32 or the tensors' dtype) against ``ref_fn``
    (float64 copies)."""
    xs = {k: t.detach().clone().requires_grad_(t.is_floating_point()) for k, t in tensors.items()}
    xr = {k: t.detach().double().requires_grad_(t.is_floating_point()) if t.is_floating_point() else t
          for k, t in tensors.items()}
    out, ref = fn(**xs), ref_fn(**xr)
    assert out.shape == ref.shape
    assert rel(out, ref) < tol, f"forward: relative error {rel(out, ref):.2e}"
    g = torch.randn_like(ref)
    names = [k for k, t in xs.items() if t.requires_grad]
    gx = torch.autograd.grad(out, [xs[k] for k in names], g.to(out.dtype))
    gr = torch.autograd.grad(ref, [xr[k] for k in names], g)
    for name, a, b in zip(names, gx, gr):
        assert torch.isfinite(a).all(), f"gradient of {name} is not finite"
        assert rel(a, b) < tol, f"gradient of {name}: relative error {rel(a, b):.2e}"


def qkv(b, h, nq, nk, dk, dv, seed=0, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    lead = (b, h) if b else (h,) if h else ()
    return {"q": torch.randn(*lead, nq, dk, generator=g, dtype=dtype),
            "k": torch.randn(*lead, nk, dk, generator=g, dtype=dtype),
            "v": torch.randn(*lead, nk, dv, generator=g, dtype=dtype)}


def ids_for(b, h, n, buckets, seed=1):
    return torch.randint(0, buckets, (b, h, n), generator=torch.Generator().manual_seed(seed))


# (B, H, Nq, Nk, Dk, Dv, name, mask factory (b, h, nq, nk) → mask)
CASES = [
    (2, 3, 257, 257, 60, 60, "full", lambda *_: M.Full()),
    (2, 3, 257, 257, 60, 60, "causal", lambda *_: M.Causal()),
    (1, 2, 63, 63, 60, 60, "causal", lambda *_: M.Causal()),
    (2, 3, 257, 257, 60, 60, "causal-window", lambda *_: M.Causal() & M.Window(100)),
    (1, 2, 257, 257, 32, 32, "window", lambda *_: M.Window(40)),
    (1, 2, 257, 257, 32, 32, "local", lambda *_: M.Local(50)),
    (1, 2, 257, 257, 32, 32, "strided-causal", lambda *_: M.Strided(7) & M.Causal()),
    (1, 2, 257, 257, 32, 32, "bigbird", lambda *_: M.Window(3, 16) | M.Global(5) | M.RandomBlocks(2, 16, 1)),
    (1, 3, 257, 257, 32, 32, "random_per_head-causal", lambda *_: M.RandomBlocks(2, 32, 0, True) & M.Causal()),
    (1, 2, 257, 257, 32, 32, "key_range-or-causal", lambda *_: M.KeyRange(10, 200) | M.Causal()),
    (1, 2, 257, 257, 32, 32, "butterfly", lambda *_: M.Butterfly(16)),
    (2, 3, 257, 257, 60, 60, "buckets-causal", lambda b, h, nq, nk: M.Buckets(ids_for(b, h, nq, 8)) & M.Causal()),
    (2, 3, 257, 257, 32, 32, "buckets_shared", lambda b, h, nq, nk: M.Buckets(ids_for(1, 1, nq, 5)[0, 0])),
    (2, 2, 257, 257, 32, 32, "block_map-or-local",
     lambda b, h, nq, nk: M.BlockMap(torch.randint(0, 5, (b, 1, 5), generator=torch.Generator().manual_seed(2)), 64)
     | M.Local(30)),
    (2, 3, 63, 257, 60, 48, "cross-causal_offset", lambda b, h, nq, nk: M.Causal(nk - nq)),
    (1, 2, 63, 257, 60, 60, "cross-causal_offset-window", lambda b, h, nq, nk: M.Causal(nk - nq) & M.Window(100)),
    (1, 2, 257, 257, 32, 32, "empty_rows", lambda *_: M.Causal() & M.KeyRange(100)),
]


def case_id(c) -> str:
    b, h, nq, nk, dk, dv, name, _ = c
    n = f"N{nq}" if nq == nk else f"Nq{nq}-Nk{nk}"
    d = f"D{dk}" if dk == dv else f"Dk{dk}-Dv{dv}"
    return f"B{b}-H{h}-{n}-{d}-{name}"


@pytest.mark.parametrize("algorithm,block", [("materialized", 64), ("tiled", 64), ("tiled", 16)],
                         ids=["materialized", "tiled64", "tiled16"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, algorithm, block):
    b, h, nq, nk, dk, dv, _, make = case
    mask = make(b, h, nq, nk)
    scale = dk ** -0.5
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=scale, algorithm=algorithm, block=block),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=scale), qkv(b, h, nq, nk, dk, dv))


@pytest.mark.parametrize("case", [c for c in CASES if c[6] in ("full", "causal")], ids=case_id)
def test_sdpa_matches_reference(case):
    b, h, nq, nk, dk, dv, _, make = case
    mask = make(b, h, nq, nk)
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.2, algorithm="sdpa"),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.2), qkv(b, h, nq, nk, dk, dv))


def test_sdpa_refuses_what_it_cannot_do():
    t = qkv(1, 2, 40, 40, 16, 16)
    with pytest.raises(ValueError, match="full or a plain causal"):
        softmax_attention(**t, mask=M.Causal() & M.Window(8), scale=1.0, algorithm="sdpa")
    c = qkv(1, 2, 20, 40, 16, 16)
    with pytest.raises(ValueError, match="Nq = Nk"):
        softmax_attention(**c, mask=M.Causal(), scale=1.0, algorithm="sdpa")
    with pytest.raises(ValueError, match="bias"):
        softmax_attention(**t, mask=M.Causal(), scale=1.0, bias=("alibi", None), algorithm="sdpa")
    with pytest.raises(ValueError, match="cap"):
        softmax_attention(**t, mask=M.Full(), scale=1.0, cap=5.0, algorithm="sdpa")
    with pytest.raises(ValueError, match="unknown softmax algorithm"):
        softmax_attention(**t, mask=M.Full(), scale=1.0, algorithm="flash")


BIASES = {
    "alibi": lambda h: ("alibi", None),
    "alibi_slopes": lambda h: ("alibi", torch.rand(h, generator=torch.Generator().manual_seed(3))),
    "relative": lambda h: ("relative", torch.randn(h, 32, generator=torch.Generator().manual_seed(4))),
    "relative_shared": lambda h: ("relative", torch.randn(1, 17, generator=torch.Generator().manual_seed(5))),
}


@pytest.mark.parametrize("cap", [None, 3.0], ids=["nocap", "cap3"])
@pytest.mark.parametrize("bias", list(BIASES))
@pytest.mark.parametrize("algorithm", ["materialized", "tiled"])
def test_bias_and_cap(bias, cap, algorithm):
    """Biases and soft caps, with the gradient of the bias table (slopes or relative table)."""
    b, h, n, d = 2, 3, 257, 60
    kind, table = BIASES[bias](h)
    mask = M.Causal() & M.Window(120)
    t = qkv(b, h, n, n, d, d)
    if table is not None:
        t["table"] = table

    def run(q, k, v, table=None):
        return softmax_attention(q, k, v, mask, scale=d ** -0.5, bias=(kind, table), cap=cap, algorithm=algorithm,
                                 block=32)

    def ref(q, k, v, table=None):
        return R.softmax_reference(q, k, v, mask, scale=d ** -0.5, bias=(kind, table), cap=cap)

    compare(run, ref, t)


def test_cap_without_bias_on_the_tiled_path():
    t = qkv(1, 2, 100, 100, 16, 16)
    compare(lambda q, k, v: softmax_attention(q, k, v, M.Strided(3), scale=0.7, cap=2.0, block=16),
            lambda q, k, v: R.softmax_reference(q, k, v, M.Strided(3), scale=0.7, cap=2.0), t)


def test_broadcast_heads_and_lower_ranks():
    """Shared keys and values across heads (MQA), 3-D [H, N, D] and 2-D [N, D] inputs."""
    t = qkv(2, 4, 100, 100, 24, 24)
    t["k"], t["v"] = t["k"][:, :1], t["v"][:, :1]
    mask = M.RandomBlocks(2, 16, 0, per_head=True) | M.Causal()
    for alg in ("materialized", "tiled"):
        compare(lambda q, k, v, alg=alg: softmax_attention(q, k, v, mask, scale=0.2, algorithm=alg, block=16),
                lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.2), t)
    t3 = qkv(0, 3, 70, 70, 16, 16)
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.2, block=16),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.2), t3)
    t2 = qkv(0, 0, 70, 70, 16, 16)
    compare(lambda q, k, v: softmax_attention(q, k, v, M.Causal() & M.Window(9), scale=0.2, block=16),
            lambda q, k, v: R.softmax_reference(q, k, v, M.Causal() & M.Window(9), scale=0.2), t2)
    assert softmax_attention(**t2, mask=M.Causal(), scale=1.0).shape == (70, 16)


def test_float64_inputs_on_the_tiled_path():
    t = qkv(1, 2, 257, 257, 60, 60, dtype=torch.float64)
    mask = M.Causal() & M.Window(64)
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.1),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.1), t, tol=1e-12)


def test_rows_without_keys_are_zero():
    t = qkv(1, 2, 100, 100, 16, 16)
    mask = M.Causal() & M.KeyRange(40)
    for alg in ("materialized", "tiled"):
        q, k, v = (x.clone().requires_grad_() for x in t.values())
        out = softmax_attention(q, k, v, mask, scale=0.3, algorithm=alg, block=16)
        assert (out[..., :40, :] == 0).all() and out[..., 40:, :].abs().sum() > 0
        out.sum().backward()
        assert torch.isfinite(q.grad).all() and (q.grad[..., :40, :] == 0).all()
    assert (R.softmax_reference(**t, mask=mask, scale=0.3)[..., :40, :] == 0).all()


def test_given_attention():
    g = torch.Generator().manual_seed(0)
    scores, v = torch.randn(2, 3, 50, 60, generator=g), torch.randn(2, 3, 60, 8, generator=g)
    mask = M.Causal(10) & M.Window(20)
    compare(lambda scores, v: given_attention(scores, v, mask), lambda scores, v: R.given_attention(scores, v, mask),
            {"scores": scores, "v": v})


def test_block_sizes_do_not_change_the_result():
    t = qkv(1, 2, 300, 300, 32, 32)
    mask = M.Window(2, 32) | M.Global(7)
    outs = [softmax_attention(**t, mask=mask, scale=0.2, block=b) for b in (8, 33, 64, 512)]
    for o in outs[1:]:
        assert rel(o, outs[0]) < 1e-5


# ---- random compositions ---------------------------------------------------------------

LEAVES = st.one_of(
    st.builds(M.Causal, st.integers(-5, 20)),
    st.builds(M.Window, st.integers(1, 40), st.integers(1, 9)),
    st.builds(M.Local, st.integers(1, 40)),
    st.builds(M.Strided, st.integers(1, 9)),
    st.builds(M.Global, st.integers(0, 6)),
    st.builds(M.RandomBlocks, st.integers(1, 3), st.integers(4, 24), st.integers(0, 3)),
    st.builds(M.KeyRange, st.integers(0, 40), st.one_of(st.none(), st.integers(20, 90))),
    st.builds(M.Butterfly, st.integers(2, 16)),
)
TREES = st.recursive(LEAVES, lambda c: st.builds(M.And, c, c) | st.builds(M.Or, c, c), max_leaves=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=TREES, n=st.integers(20, 90), extra=st.sampled_from([0, 0, 13]), block=st.sampled_from([8, 16, 32]))
def test_random_trees_tiled_matches_reference(mask, n, extra, block):
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.3, block=block),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.3), qkv(1, 2, n, n + extra, 16, 16))


@pytest.mark.parametrize("case", [c for c in CASES if c[6] in (
    "causal-window", "bigbird", "random_per_head-causal", "buckets-causal", "block_map-or-local",
    "cross-causal_offset", "empty_rows")], ids=case_id)
def test_plain_chunk_kernel(case, monkeypatch):
    """The matmul chunk kernel (used off CPU, with caps and trainable bias tables) on its own."""
    from codegen.softmax import tiled

    monkeypatch.setattr(tiled, "flash_available", lambda *_: False)
    b, h, nq, nk, dk, dv, _, make = case
    mask = make(b, h, nq, nk)
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.3, block=32),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.3), qkv(b, h, nq, nk, dk, dv))


def test_buckets_with_a_bias_run_unsorted():
    t = qkv(1, 2, 100, 100, 16, 16)
    ids = ids_for(1, 2, 100, 4)
    mask = M.Buckets(ids) & M.Causal()
    compare(lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.3, bias=("alibi", None), block=16),
            lambda q, k, v: R.softmax_reference(q, k, v, mask, scale=0.3, bias=("alibi", None)), t)
