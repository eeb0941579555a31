"""Generated Triton softmax kernels (codegen/softmax/triton_gen.py) against the plain
reference and the PyTorch runtime: forward and gradients, fp32, awkward sizes; the block
schedules (closed forms and block maps) against the dense masks, as a property test.

On a CPU the kernels run through TRITON_INTERPRET=1 (set by tests/conftest.py), so sizes
stay small: N ≤ 128, blocks of 32.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codegen import masks as M
from codegen.softmax import triton_gen as G
from codegen.softmax import triton_support as sx
from codegen.softmax.reference import softmax_reference
from codegen.softmax.torch_impl import softmax_attention
from codegen.torch.load import load_source

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # compiled on a GPU, interpreted on a CPU
HEADER = "import math\nimport torch\nimport triton\nimport triton.language as tl\nfrom codegen import masks as M\n"


@pytest.fixture(autouse=True)
def nan_scratch(monkeypatch):
    """Kernel outputs start as NaN: a kernel that leaves any of them unwritten fails."""
    monkeypatch.setenv("SEQDSL_TRITON_NAN_SCRATCH", "1")


def build(mask, stem="sm", **kw):
    """Generate one section, load it as a module, return its callable."""
    kw.setdefault("scale", 0.3)
    kw.setdefault("block_m", 32)
    kw.setdefault("block_n", 32)
    src = HEADER + G.generate("attn", mask, **kw)
    return load_source(src, f"test_softmax_{stem}").attn


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(fn, ref_fn, inputs, grads=True, torch_fn=None):
    """Forward (rel < 1e-4) and gradients of every input that requires one (rel < 1e-3)."""
    out = fn(*inputs)
    ref = ref_fn(*inputs)
    assert torch.isfinite(out).all()
    assert rel(out, ref) < 1e-4, rel(out, ref)
    if torch_fn is not None:
        other = torch_fn(*inputs)
        assert rel(out, other) < 1e-4
    if not grads:
        return out
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, leaves, g)
    for n, (a, b) in enumerate(zip(got, want)):
        assert torch.isfinite(a).all(), f"gradient {n} not finite"
        assert rel(a, b) < 1e-3, (n, rel(a, b))
    return out


def qkv(b, h, nq, nk, d, dv=None, hkv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hkv = h if hkv is None else hkv
    mk = lambda *s: torch.randn(*s, generator=gen).to(DEVICE).requires_grad_()  # noqa: E731
    return mk(b, h, nq, d), mk(b, hkv, nk, d), mk(b, hkv, nk, dv or d)


BIGBIRD = M.Or(M.Or(M.Window(20), M.Global(8)), M.RandomBlocks(2, block=16, seed=1))
CASES = [  # id, mask, (B, H, Nq, Nk, D)
    ("B2-H2-N100-D24-causal", M.Causal(0), (2, 2, 100, 100, 24)),
    ("B1-H2-N63-D16-window", M.Window(20), (1, 2, 63, 63, 16)),
    ("B1-H1-N100-D40-causal&window", M.And(M.Causal(0), M.Window(40)), (1, 1, 100, 100, 40)),
    ("B1-H2-N100-D16-strided", M.Strided(7), (1, 2, 100, 100, 16)),
    ("B1-H1-N100-D24-local", M.Local(24), (1, 1, 100, 100, 24)),
    ("B1-H2-N100-D16-longformer", M.Or(M.Global(8), M.Window(16)), (1, 2, 100, 100, 16)),
    ("B1-H2-N128-D32-bigbird", BIGBIRD, (1, 2, 128, 128, 32)),
    ("B1-H2-N100-D16-random-per-head", M.And(M.Causal(0), M.RandomBlocks(2, block=24, seed=3, per_head=True)),
     (1, 2, 100, 100, 16)),
    ("B1-H1-N100-D16-butterfly", M.Butterfly(16), (1, 1, 100, 100, 16)),
    ("B1-H1-N100-D16-butterfly(12,factors=2)", M.Butterfly(12, factors=2), (1, 1, 100, 100, 16)),
    ("B1-H1-Nq63-Nk100-D24-causal+37", M.Causal(37), (1, 1, 63, 100, 24)),
    ("B1-H1-N100-D16-keyrange&causal-empty-rows", M.And(M.KeyRange(50, 70), M.Causal(0)), (1, 1, 100, 100, 16)),
    ("B1-H1-N100-D16-global&window(block8)", M.And(M.Global(40), M.Window(2, block=8)), (1, 1, 100, 100, 16)),
]


@pytest.mark.parametrize("mask,sizes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_masks_forward_and_grads(mask, sizes):
    b, h, nq, nk, d = sizes
    fn = build(mask)
    ref = lambda q, k, v: softmax_reference(q, k, v, mask, scale=0.3)  # noqa: E731
    rt = lambda q, k, v: softmax_attention(q, k, v, mask, scale=0.3, algorithm="materialized")  # noqa: E731
    out = check(fn, ref, qkv(b, h, nq, nk, d), torch_fn=rt)
    if isinstance(mask, M.And) and isinstance(mask.a, M.KeyRange):
        assert (out[..., :50, :] == 0).all()          # rows that keep no key give 0


def test_empty_rows_have_zero_gradient():
    mask = M.And(M.KeyRange(50, 70), M.Causal(0))
    q, k, v = qkv(1, 1, 100, 100, 16)
    out = build(mask)(q, k, v)
    (out.sum()).backward()
    assert (q.grad[..., :50, :] == 0).all() and torch.isfinite(q.grad).all()
    assert (k.grad[..., 70:, :] == 0).all() and (v.grad[..., :50, :] == 0).all()


def test_head_sizes_differ():
    mask = M.Causal(0)
    ref = lambda q, k, v: softmax_reference(q, k, v, mask, scale=0.3)  # noqa: E731
    check(build(mask), ref, qkv(1, 2, 63, 63, 16, dv=40))


def test_grouped_query_heads():
    mask = M.And(M.Causal(0), M.Window(30))
    q, k, v = qkv(2, 4, 100, 100, 16, hkv=2)

    def ref(q, k, v):
        return softmax_reference(q, k.repeat_interleave(2, -3), v.repeat_interleave(2, -3), mask, scale=0.3)

    check(build(mask), ref, (q, k, v))


def test_broadcast_leading_dims_and_flat():
    mask = M.Causal(0)
    fn = build(mask)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 40, 16, generator=gen).to(DEVICE).requires_grad_()
    k = torch.randn(1, 3, 40, 16, generator=gen).to(DEVICE).requires_grad_()     # broadcast over the batch
    v = torch.randn(3, 40, 16, generator=gen).to(DEVICE).requires_grad_()
    ref = lambda q, k, v: softmax_reference(q, k, v, mask, scale=0.3)  # noqa: E731
    out = check(fn, ref, (q, k, v))
    assert out.shape == (2, 3, 40, 16)
    q2, k2, v2 = (torch.randn(40, 16, generator=gen).to(DEVICE) for _ in range(3))
    out2 = fn(q2, k2, v2)
    assert out2.shape == (40, 16) and rel(out2, ref(q2, k2, v2)) < 1e-4


@pytest.mark.parametrize("trainable", [False, True], ids=["default-slopes", "slopes-table"])
def test_alibi(trainable):
    mask = M.Causal(0)
    q, k, v = qkv(1, 2, 100, 100, 16)
    table = torch.tensor([0.5, 0.125], device=DEVICE, requires_grad=True) if trainable else None
    bias = ("alibi", table)
    fn = build(mask, stem="alibi", bias_kind="alibi")
    ref = lambda q, k, v, t=None: softmax_reference(q, k, v, mask, scale=0.3, bias=bias)  # noqa: E731
    rt = lambda q, k, v, t=None: softmax_attention(q, k, v, mask, scale=0.3, bias=bias, algorithm="materialized")  # noqa: E731
    check(fn, ref, (q, k, v, table) if trainable else (q, k, v), torch_fn=rt)


def test_relative_bias_with_table_gradient():
    mask = M.Window(24)
    q, k, v = qkv(1, 2, 100, 100, 16)
    table = torch.randn(2, 16, generator=torch.Generator().manual_seed(5)).to(DEVICE).requires_grad_()
    fn = build(mask, stem="rel", bias_kind="relative")
    ref = lambda q, k, v, t: softmax_reference(q, k, v, mask, scale=0.3, bias=("relative", t))  # noqa: E731
    check(fn, ref, (q, k, v, table))


def test_soft_cap():
    mask = M.And(M.Causal(0), M.Window(40))
    q, k, v = qkv(1, 2, 100, 100, 24)
    with torch.no_grad():
        q *= 3                      # scores large enough for the cap to bend them
    fn = build(mask, stem="cap", cap=2.5, bias_kind="alibi")
    ref = lambda q, k, v: softmax_reference(q, k, v, mask, scale=0.3, cap=2.5, bias="alibi")  # noqa: E731
    check(fn, ref, (q, k, v))


@pytest.mark.parametrize("mask", [M.And(M.Causal(0), M.Window(20)), M.Or(M.Global(4), M.Window(10)),
                                  M.Or(M.Window(8), M.RandomBlocks(1, block=16, seed=2))],
                         ids=["causal&window", "longformer", "window|random"])
def test_varlen(mask):
    cu = torch.tensor([0, 37, 100, 128], dtype=torch.int32, device=DEVICE)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 128, 16, generator=gen).to(DEVICE).requires_grad_() for _ in range(3))

    def ref(q, k, v):
        parts = [softmax_reference(q[:, a:b], k[:, a:b], v[:, a:b], mask, scale=0.3)
                 for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
        return torch.cat(parts, 1)

    fn = build(mask, stem="varlen")
    check(lambda q, k, v: fn(q, k, v, cu_seqlens=cu), ref, (q, k, v))


# ---- the generated text and the host-side contract -------------------------------------------


def test_generated_text_is_specialised():
    src = G.generate("sw", M.And(M.Causal(0), M.Window(256)), scale=0.125, cap=30.0)
    assert "((kj <= qi) & (tl.abs(qi - kj) < 256))" in src            # the predicate, inlined
    assert "pos_lo = tl.maximum(0, pos_first - 255)" in src            # the closed-form schedule
    assert "30.0 * (1.0 - 2.0 / (tl.exp(b_s * 0.06666666666666667) + 1.0))" in src
    assert "MAP_PART" not in src and "uses_map=False" in src
    bb = G.generate("bb", BIGBIRD, scale=0.125)
    assert "uses_map=True" in bb and "RND0" in bb and "((qi < 8) | (kj < 8))" in bb


def test_unsupported_reasons():
    ids = torch.zeros(8, dtype=torch.long)
    assert G.unsupported(M.Causal(0)) is None
    assert G.unsupported(BIGBIRD, bias_kind="relative", cap=5.0) is None
    assert "content-based" in G.unsupported(M.And(M.Causal(0), M.Buckets(ids)))
    assert "content-based" in G.unsupported(M.BlockMap(ids, 4))
    assert "bias" in G.unsupported(M.Causal(0), bias_kind="rotary")
    assert "cap" in G.unsupported(M.Causal(0), cap=-1.0)
    with pytest.raises(ValueError, match="content-based"):
        G.generate("x", M.Buckets(ids), scale=1.0)
    assert "block_m=128, block_n=16" in G.generate("x", M.Causal(0), scale=1.0, block_m=100, block_n=3)
    with pytest.raises(ValueError, match="identifier"):
        G.generate("x; import os", M.Causal(0), scale=1.0)


def test_mask_constructor_source_round_trips():
    for mask in [BIGBIRD, M.And(M.KeyRange(3, None), M.Causal(-2)), M.Or(M.Local(5), M.Strided(3)),
                 M.And(M.Butterfly(8), M.RandomBlocks(2, block=8, seed=4, per_head=True)), M.Full()]:
        src = G.mask_constructor_source(mask)
        assert eval(src, {"M": M}) == mask                                  # noqa: S307 (our own text)


def test_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = sx.Kernels(None, None, None, M.Full(), None, 32, 32, False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sx.attention(spec, *(torch.zeros(1, 4, 16) for _ in range(3)))


def test_schedules_skip_blocks():
    """Block sparsity is real: a window visits O(window) key blocks per query block."""
    visited, full = sx.host_schedule(M.And(M.Causal(0), M.Window(128)), 1024, 1024, 64, 64)
    assert int(visited.sum(-1).max()) == 3 and int(full.sum()) == 15   # partial, full, diagonal (partial)
    visited, _ = sx.host_schedule(M.Or(M.Global(64), M.Window(64)), 1024, 1024, 64, 64)
    assert int(visited[0, 8].sum()) == 4                                 # global block + 3 window blocks


# ---- property: the schedules never skip a kept pair, never call a partial tile full -----------

def leaves():
    return st.one_of(
        st.just(M.Full()),
        st.builds(M.Causal, st.integers(-40, 40)),
        st.builds(M.Window, st.integers(0, 40), st.integers(1, 9)),
        st.builds(M.Local, st.integers(1, 60)),
        st.builds(M.Strided, st.integers(1, 12)),
        st.builds(M.Global, st.integers(0, 40)),
        st.builds(lambda a, n: M.KeyRange(a, None if n is None else a + n), st.integers(0, 150),
                  st.none() | st.integers(0, 150)),
        st.builds(M.Butterfly, st.sampled_from([4, 8, 16, 32])),
        st.builds(M.RandomBlocks, st.integers(1, 3), st.integers(4, 40), st.integers(0, 5), st.booleans()),
    )


MASKS = st.recursive(leaves(), lambda c: st.builds(M.And, c, c) | st.builds(M.Or, c, c), max_leaves=4)


def check_schedule(mask, nq, nk, bm, bn, transposed, heads=2):
    """The schedule the kernels follow, against the dense mask."""
    visited, full = sx.host_schedule(mask, nq, nk, bm, bn, heads, transposed)
    dense = M.simplify(mask).dense(nq, nk, heads=heads).expand(heads, nq, nk)
    nqb, nkb = -(-nq // bm), -(-nk // bn)
    pad = torch.zeros(heads, nqb * bm, nkb * bn, dtype=torch.bool)
    pad[:, :nq, :nk] = dense
    some = pad.reshape(heads, nqb, bm, nkb, bn).any(4).any(2)
    # a full tile runs without the predicate: it may hold padding of the blocks the program
    # owns (never stored), not of the blocks it visits (their scores would count)
    if transposed:
        pad[:, :nq, nk:] = True
    else:
        pad[:, nq:, :nk] = True
    every = pad.reshape(heads, nqb, bm, nkb, bn).all(4).all(2)
    if transposed:
        some, every = some.transpose(-1, -2), every.transpose(-1, -2)
    visited, full = visited.expand_as(some), full.expand_as(some)
    assert not (some & ~visited).any(), "a block holding a kept pair is skipped"
    assert not (full & ~every).any(), "a block is marked full but holds a dropped pair or padding"
    assert not (full & ~visited).any()
    return visited, full


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=MASKS, nq=st.integers(1, 300), nk=st.integers(1, 300), bm=st.sampled_from([16, 32, 64]),
       bn=st.sampled_from([16, 32, 64]), transposed=st.booleans())
def test_schedule_covers_the_mask(mask, nq, nk, bm, bn, transposed):
    check_schedule(mask, nq, nk, bm, bn, transposed)


SWEEP = ([M.Causal(o) for o in range(-21, 22, 3)] + [M.Window(w, b) for w in (0, 1, 2, 3, 15, 16, 17, 31) for b in (1, 3, 16)]
         + [M.Local(s) for s in (1, 5, 7, 16, 33)] + [M.Strided(s) for s in (1, 2, 17)]
         + [M.Global(g) for g in (0, 1, 15, 16, 17, 40)]
         + [M.KeyRange(a, b) for a, b in ((0, None), (15, None), (17, 33), (16, 48), (40, 41), (50, 20))])


@pytest.mark.parametrize("mask", SWEEP, ids=[G.mask_constructor_source(m) for m in SWEEP])
def test_closed_forms_sweep(mask):
    """Every closed-form leaf, alone and under a causal mask, at sizes around block edges."""
    for m in (mask, M.And(M.Causal(-1), mask)):
        for nq, nk in ((23, 23), (100, 100), (63, 100), (100, 37)):
            for bm, bn in ((16, 16), (32, 16)):
                for transposed in (False, True):
                    check_schedule(m, nq, nk, bm, bn, transposed, heads=1)
