"""BigBird's attention pattern (Zaheer et al. 2020, §2 and App. D; google-research/bigbird
``bigbird_block_rand_mask``): over blocks of b tokens, query block i sees key blocks
i−1, i, i+1 (window), the global blocks, and R random blocks drawn from the others — never a
window or global block — with a fresh draw per layer and per head. Written out here on the
block grid and checked against ``random_blocks(R, block, seed = layer, per_head = true,
exclude = <window | global>)`` as codegen/masks draws it, at BigBird-base's sizes
(N 4096, b 64, R 3, 12 layers × 12 heads)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the masks' runtime needs torch")

from codegen import masks as CM  # noqa: E402

N, BK, R, LAYERS, HEADS = 4096, 64, 3, 12, 12
NB = N // BK


def _exclude():
    return CM.Or(CM.Or(CM.Or(CM.Window(2, block=BK), CM.Global(BK)), CM.KeyRange(N - BK, None)),
                 CM.QueryRange(N - BK, None))


def test_random_blocks_avoid_window_and_global_blocks_and_never_repeat():
    patterns = set()
    idx = torch.arange(NB)
    window = (idx[:, None] - idx[None, :]).abs() <= 1
    globals_ = torch.zeros(NB, NB, dtype=torch.bool)
    globals_[:, 0] = globals_[:, -1] = True
    for layer in range(LAYERS):
        grid = CM.RandomBlocks(R, BK, layer, True, _exclude()).grid(N, N, HEADS)     # [H, NB, NB]
        assert grid.shape == (HEADS, NB, NB)
        assert not (grid & (window | globals_)).any()          # never a window or a global block
        assert not grid[:, 0].any() and not grid[:, -1].any()  # the global rows see all: nothing to draw
        assert bool((grid[:, 1:-1].sum(-1) == R).all())        # R per other row
        patterns.update(tuple(g.flatten().tolist()) for g in grid)
    assert len(patterns) == LAYERS * HEADS     # 144 distinct patterns (seed + h repeated them before)


def test_the_union_is_the_papers_pattern():
    """keep(i, j) = |⌊i/b⌋ − ⌊j/b⌋| ≤ 1 or i < b or j < b or i ≥ N − b or j ≥ N − b
    or rand[h, ⌊i/b⌋, ⌊j/b⌋]."""
    n = 512
    nb = n // BK
    fixed = CM.Or(CM.Or(CM.Or(CM.Window(2, block=BK), CM.Global(BK)), CM.KeyRange(n - BK, None)),
                  CM.QueryRange(n - BK, None))
    rb = CM.RandomBlocks(R, BK, 5, True, fixed)
    mask = CM.Or(fixed, rb)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    got = mask.keep(i, j, n, n, heads=2)
    rand = rb.grid(n, n, 2)
    bi, bj = i // BK, j // BK
    want = ((bi - bj).abs() <= 1) | (i < BK) | (j < BK) | (i >= n - BK) | (j >= n - BK) | rand[:, bi, bj]
    assert torch.equal(got.expand_as(want), want)
    assert int(rand.sum()) == 2 * (nb - 2) * R
