"""Runtime masks (codegen/masks.py): the dense masks equal the IR's predicate semantics
(seqdsl.analysis.masks), the block schedules equal the dense masks tile by tile (every mask
kind and random And/Or trees), random blocks are the analysis' draw, and schedules of
structured masks are cheap at N = 16384."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import sympy

torch = pytest.importorskip("torch", reason="the runtime masks need torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from codegen import masks as M  # noqa: E402
from seqdsl.analysis import masks as AM  # noqa: E402
from seqdsl.ir import mix as IR  # noqa: E402

I = sympy.Integer  # noqa: E741

# (IR mask, runtime mask) pairs: every structured kind, with awkward sizes
IR_CASES = {
    "full": (IR.Full(), M.Full()),
    "causal": (IR.Causal(), M.Causal()),
    "causal-offset": (IR.Causal(I(7)), M.Causal(7)),
    "window": (IR.Window(I(9)), M.Window(9)),
    "window-blocks": (IR.Window(I(2), I(5)), M.Window(2, 5)),
    "local": (IR.Local(I(13)), M.Local(13)),
    "strided": (IR.Strided(I(6)), M.Strided(6)),
    "global": (IR.Global(I(3)), M.Global(3)),
    "random": (IR.RandomBlocks(I(2), I(8), 3), M.RandomBlocks(2, 8, 3)),
    "key-range": (IR.KeyRange(I(5), I(40)), M.KeyRange(5, 40)),
    "key-range-open": (IR.KeyRange(I(20)), M.KeyRange(20)),
    "butterfly": (IR.Butterfly(I(4)), M.Butterfly(4)),
    "causal-window": (IR.And(IR.Causal(), IR.Window(I(16))), M.Causal() & M.Window(16)),
    "bigbird": (IR.Or(IR.Or(IR.Window(I(3), I(8)), IR.Global(I(8))), IR.RandomBlocks(I(2), I(8))),
                M.Window(3, 8) | M.Global(8) | M.RandomBlocks(2, 8)),
    "strided-causal": (IR.And(IR.Strided(I(5)), IR.Causal()), M.Strided(5) & M.Causal()),
}


def ir_dense(mask_ir, nq: int, nk: int) -> np.ndarray:
    i, j = np.arange(nq)[:, None], np.arange(nk)[None, :]
    return np.broadcast_to(AM._predicate(mask_ir, i, j, AM._random_pred(nq, nk)), (nq, nk))


@pytest.mark.parametrize("name", IR_CASES)
@pytest.mark.parametrize("nq,nk", [(63, 63), (57, 90)], ids=["N63", "Nq57-Nk90"])
def test_dense_equals_ir_predicate(name, nq, nk):
    mask_ir, mask = IR_CASES[name]
    dense = mask.dense(nq, nk).expand(nq, nk).numpy()
    assert (dense == ir_dense(mask_ir, nq, nk)).all()
    assert M.from_ir(mask_ir, {}, {}) == mask


def _truth(dense: torch.Tensor, bq: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(any, all) per tile from a dense mask [.., nq, nk]."""
    nq, nk = dense.shape[-2:]
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    kept = torch.zeros(*dense.shape[:-2], nqb * bq, nkb * bk, dtype=torch.int64)
    valid = torch.zeros(nqb * bq, nkb * bk, dtype=torch.int64)
    kept[..., :nq, :nk] = dense.long()
    valid[:nq, :nk] = 1
    k = kept.reshape(*dense.shape[:-2], nqb, bq, nkb, bk).sum((-1, -3))
    v = valid.reshape(nqb, bq, nkb, bk).sum((-1, -3))
    return k > 0, k == v


def check_schedule(mask: M.Mask, nq: int, nk: int, bq: int, bk: int, heads: int | None = None) -> None:
    """Block schedule ≡ dense mask: listed = tiles holding a kept pair (so every kept pair lies
    in a listed tile and unlisted tiles hold none), full = tiles whose every pair is kept."""
    sched = mask.blocks(nq, nk, bq, bk, heads)
    dense = mask.dense(nq, nk, heads=heads)
    dense = dense.expand(*dense.shape[:-2], nq, nk)
    any_, all_ = _truth(dense, bq, bk)
    listed, full = sched.grids()
    assert (listed >= any_).all(), "a kept pair lies outside the listed tiles"
    assert (full <= all_).all(), "a tile marked full has a masked pair"
    # small sizes: the uncertain tiles of compositions are settled, so the schedule is exact
    assert (listed == any_).all() and (full == all_).all()
    idx = sched.index
    assert ((idx[..., 1:] > idx[..., :-1]) | (idx[..., 1:] < 0)).all(), "key blocks are not ascending"


@pytest.mark.parametrize("name", IR_CASES)
@pytest.mark.parametrize("bq,bk", [(16, 16), (7, 12), (64, 64)])
def test_schedule_equals_dense(name, bq, bk):
    check_schedule(IR_CASES[name][1], 63, 90, bq, bk)
    check_schedule(IR_CASES[name][1], 257, 257, bq, bk)


def test_schedule_rows_and_tags():
    sched = (M.Causal() & M.Window(256)).blocks(1000, 1000, 64, 64)
    assert len(sched) == 16
    assert sched[0] == [(0, False)]
    assert sched[5] == [(1, False), (2, True), (3, True), (4, True), (5, False)]
    assert sum(len(r) for r in sched) == sched.pairs_visited()


def test_schedule_matches_analysis_tile_counts():
    """The analysis counts tiles at concrete sizes by evaluating the predicate; the runtime
    schedule must visit exactly those tiles."""
    for name, (mask_ir, mask) in IR_CASES.items():
        pairs, tiles = AM.exact_counts(mask_ir, 300, 300, 64, 64)
        assert mask.blocks(300, 300, 64, 64).pairs_visited() == tiles, name
        assert int(mask.dense(300, 300).expand(300, 300).sum()) == pairs, name


def test_random_blocks_reproduce_the_analysis_draw():
    nq, nk, count, block, seed = 100, 130, 3, 16, 5
    table = AM.random_block_table(count, block, seed, math.ceil(nq / block), math.ceil(nk / block))
    grid = M.RandomBlocks(count, block, seed).grid(nq, nk)
    expected = np.zeros(grid.shape, bool)
    for r, cols in enumerate(table):
        expected[r, cols] = True
    assert (grid.numpy() == expected).all()
    per_head = M.RandomBlocks(count, block, seed, per_head=True).dense(nq, nk, heads=3)
    assert per_head.shape == (3, nq, nk)
    for h in range(3):      # head h draws from the stream (seed, h): not seed + h's draw (layers repeated heads)
        cols = AM.random_block_table(count, block, seed, math.ceil(nq / block), math.ceil(nk / block), head=h)
        rows = np.zeros((math.ceil(nq / block), math.ceil(nk / block)), bool)
        for r, c in enumerate(cols):
            rows[r, c] = True
        blocks = torch.as_tensor(rows).repeat_interleave(block, 0).repeat_interleave(block, 1)[:nq, :nk]
        assert torch.equal(per_head[h], blocks)
        if h:
            assert not torch.equal(per_head[h], M.RandomBlocks(count, block, seed + h).dense(nq, nk))
    with pytest.raises(ValueError, match="heads"):
        M.RandomBlocks(count, block, per_head=True).dense(nq, nk)
    check_schedule(M.RandomBlocks(2, 8, 1, per_head=True) & M.Causal(), 70, 70, 16, 16, heads=3)


def test_data_dependent_masks():
    ids = torch.randint(0, 4, (2, 3, 50))
    b = M.Buckets(ids)
    dense = b.dense(50, 50)
    assert dense.shape == (2, 3, 50, 50)
    assert torch.equal(dense, ids[..., :, None] == ids[..., None, :])
    assert b.blocks(50, 50, 16, 16) is None and (b & M.Causal()).blocks(50, 50, 16, 16) is None
    bm = M.BlockMap(torch.tensor([[2, 0, 1, 1]]), 16)
    d = bm.dense(60, 64)
    assert d.shape == (1, 60, 64)
    assert d[0, 0, 32:48].all() and not d[0, 0, :32].any() and d[0, 59, 16:32].all()
    assert bm.blocks(60, 64, 16, 16) is None
    # the tile bounds of data-dependent masks are still sound (used by the tiled softmax)
    for mask in (b, bm | M.Causal()):
        n = 50 if mask is b else 60
        g = mask.tiles(n, 50 if mask is b else 64, 16, 16)
        truth, _ = _truth(mask.dense(n, 50 if mask is b else 64), 16, 16)
        assert (g.any >= truth).all()
    with pytest.raises(ValueError, match="self-attention"):
        b.dense(40, 50)


def test_from_ir_sizes_and_tensors():
    W, N = sympy.Symbol("W", positive=True, integer=True), sympy.Symbol("N", positive=True, integer=True)
    ids = torch.zeros(2, 8, dtype=torch.long)
    ir = IR.Or(IR.And(IR.Causal(N - 8), IR.Window(W)), IR.Buckets(IR.Ref("ids")))
    m = M.from_ir(ir, {"W": 4, "N": 10}, {"ids": ids})
    assert m.a == M.Causal(2) & M.Window(4) and m.b.ids is ids
    with pytest.raises(ValueError, match="W"):
        M.from_ir(IR.Window(W), {}, {})
    with pytest.raises(ValueError, match="not an integer"):
        M.from_ir(IR.Window(W / 3), {"W": 4}, {})
    with pytest.raises(ValueError, match="ids"):
        M.from_ir(IR.Buckets(IR.Ref("ids")), {}, {})
    with pytest.raises(ValueError, match="not a boolean mask"):
        M.from_ir(IR.Decay(I(1)), {}, {})


def test_operators_build_the_algebra():
    assert M.Causal() & M.Window(4) == M.And(M.Causal(), M.Window(4))
    assert M.Global(2) | M.Local(8) == M.Or(M.Global(2), M.Local(8))
    assert hash(M.Causal() & M.Window(4)) == hash(M.And(M.Causal(), M.Window(4)))
    assert not (M.Buckets(torch.zeros(4, dtype=torch.long)) & M.Causal()).static


def test_structured_schedules_are_cheap_at_16k():
    """No N × N work: the schedule of a sliding window at N = 16384 is built from the tile
    grid (256 × 256) in well under a second."""
    n = 16384
    for mask in (M.Causal() & M.Window(256), M.Window(3, 64) | M.Global(64) | M.RandomBlocks(3, 64),
                 M.Strided(128) & M.Causal(), M.Butterfly(64) & M.Causal(), M.Local(512) & M.Causal()):
        t = time.perf_counter()
        sched = mask.blocks(n, n, 64, 64)
        elapsed = time.perf_counter() - t
        assert elapsed < 2.0, (mask, elapsed)
        assert len(sched) == n // 64
    sched = (M.Causal() & M.Window(256)).blocks(n, n, 64, 64)
    assert sched.pairs_visited() == 5 * 256 - 10     # W/64 + 1 tiles per row, fewer in the first 4 rows


# ---- random compositions -------------------------------------------------------------

LEAVES = st.one_of(
    st.just(M.Full()),
    st.builds(M.Causal, st.integers(-8, 30)),
    st.builds(M.Window, st.integers(0, 40), st.integers(1, 9)),
    st.builds(M.Local, st.integers(1, 40)),
    st.builds(M.Strided, st.integers(1, 12)),
    st.builds(M.Global, st.integers(0, 12)),
    st.builds(M.RandomBlocks, st.integers(1, 4), st.integers(1, 24), st.integers(0, 3)),
    st.builds(M.KeyRange, st.integers(0, 60), st.one_of(st.none(), st.integers(0, 90))),
    st.builds(M.Butterfly, st.integers(1, 16)),
)
TREES = st.recursive(LEAVES, lambda c: st.builds(M.And, c, c) | st.builds(M.Or, c, c), max_leaves=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=TREES, nq=st.integers(1, 90), nk=st.integers(1, 90), bq=st.integers(1, 33), bk=st.integers(1, 33))
def test_random_trees_schedule_equals_dense(mask, nq, nk, bq, bk):
    check_schedule(mask, nq, nk, bq, bk)
