"""Plans of the tiled softmax: every listed tile of the block schedule is computed exactly
once (no tile twice, none forgotten, no unlisted tile), unmasked steps hold only full tiles,
and the common masks get the cheap shapes (a causal triangle in log N batched squares, a
sliding window in one step of strided views)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the softmax runtime needs torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from codegen import masks as M  # noqa: E402
from codegen.softmax import plan as P  # noqa: E402

MASKS = {
    "full": M.Full(),
    "causal": M.Causal(),
    "causal-offset": M.Causal(37),
    "causal-window": M.Causal() & M.Window(100),
    "causal-window-long": M.Causal() & M.Window(400),
    "local": M.Local(48),
    "strided": M.Strided(5) & M.Causal(),
    "bigbird": M.Window(3, 16) | M.Global(16) | M.RandomBlocks(2, 16),
    "random-per-head": M.RandomBlocks(2, 16, 0, per_head=True),
    "butterfly": M.Butterfly(16) & M.Causal(),
    "key-range": M.KeyRange(40, 300) | M.Causal(),
}


def check_coverage(mask: M.Mask, nq: int, nk: int, block: int, heads: int = 2, chunk_keys: int = 128) -> P.Plan:
    plan = P.make_plan(mask, nq, nk, block, block, heads, (1, heads), chunk_keys=chunk_keys)
    listed, full = P._grids(mask, nq, nk, block, block, heads)
    nqb, nkb = listed.shape
    count = torch.zeros(nqb, nkb + plan.front + plan.back, dtype=torch.long)
    for s in plan.steps:
        given_ = torch.ones_like(s.kidx, dtype=torch.bool) if s.valid is None else s.valid
        G, g = s.rows.shape
        rows = s.rows[:, :, None].expand(G, g, s.kidx.shape[1])
        tiles = s.kidx[:, None, :].expand_as(rows)
        sel = given_[:, None, :].expand_as(rows)
        if s.causal:                    # the fused kernel's causal mode: only the square's lower triangle
            assert torch.equal(s.rows, s.kidx - plan.front), "a causal square off the diagonal"
            sel = sel & (tiles - plan.front <= rows)
        count.index_put_((rows[sel], tiles[sel]), torch.ones(int(sel.sum()), dtype=torch.long), accumulate=True)
        if not s.masked:
            assert full[rows.reshape(-1), (tiles - plan.front).reshape(-1)].all(), "an unmasked step holds a partial tile"
    inner = count[:, plan.front:plan.front + nkb]
    assert (count.sum() == inner.sum()), "a padding tile was given to a step"
    assert torch.equal(inner, listed.long()), "tiles computed twice, forgotten, or not listed"
    return plan


@pytest.mark.parametrize("name", MASKS)
@pytest.mark.parametrize("n,block", [(257, 16), (1000, 32), (130, 64)])
def test_every_listed_tile_once(name, n, block):
    check_coverage(MASKS[name], n, n, block)


def test_cross_attention_coverage():
    check_coverage(M.Causal(300) & M.Window(200), 100, 400, 16)
    check_coverage(M.Causal(300), 100, 400, 32)


def test_causal_is_a_few_batched_squares():
    plan = P.make_plan(M.Causal(), 4096, 4096, 64, 64, 8, (1, 8))
    assert len(plan.steps) <= 6
    assert all(s.q_view is not None and s.k_view is not None for s in plan.steps), "gathered copies"
    assert sum(not s.masked for s in plan.steps) >= 4
    # the diagonal: squares in the fused kernel's causal mode, no mask tensor
    (diag,) = [s for s in plan.steps if s.masked]
    assert diag.causal and diag.rows.shape == (16, 4) and diag.keep is None


def test_causal_squares_only_where_the_predicate_is_the_triangle():
    # an offset diagonal, or a window narrower than a square, is not j ≤ i on the square
    for mask in (M.Causal(1), M.Causal(-1), M.Causal() & M.Window(100)):
        plan = P.make_plan(mask, 1024, 1024, 64, 64, 2, (1, 2))
        assert not any(s.causal for s in plan.steps), mask


def test_sliding_window_is_one_step_of_views():
    plan = P.make_plan(M.Causal() & M.Window(256), 16384, 16384, 64, 64, 2, (1, 2))
    # the first 256 rows see nothing beyond their square: a causal square; the rest one window
    first, s = plan.steps
    assert first.causal and first.rows.tolist() == [[0, 1, 2, 3]]
    assert s.rows.shape == (252, 1) and s.kidx.shape == (252, 5)
    assert s.q_view == (4, 1) and s.k_view is not None
    assert s.keep is not None, "the mask of a static plan is cached"


def test_full_attention_is_one_step():
    plan = P.make_plan(M.Full(), 4096, 4096, 64, 64, 8, (1, 8))
    assert len(plan.steps) == 1 and not plan.steps[0].masked


LEAVES = st.one_of(
    st.builds(M.Causal, st.integers(-5, 40)),
    st.builds(M.Window, st.integers(1, 60), st.integers(1, 9)),
    st.builds(M.Local, st.integers(1, 60)),
    st.builds(M.Strided, st.integers(1, 9)),
    st.builds(M.Global, st.integers(0, 20)),
    st.builds(M.RandomBlocks, st.integers(1, 3), st.integers(4, 32), st.integers(0, 3)),
    st.builds(M.KeyRange, st.integers(0, 60), st.one_of(st.none(), st.integers(20, 200))),
    st.builds(M.Butterfly, st.integers(2, 16)),
)
TREES = st.recursive(LEAVES, lambda c: st.builds(M.And, c, c) | st.builds(M.Or, c, c), max_leaves=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=TREES, nq=st.integers(1, 200), extra=st.integers(0, 60), block=st.sampled_from([4, 8, 16]),
       chunk=st.sampled_from([16, 64, 128]))
def test_random_trees_every_listed_tile_once(mask, nq, extra, block, chunk):
    check_coverage(mask, nq, nq + extra, block, chunk_keys=chunk)
