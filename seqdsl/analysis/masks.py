"""How many (query, key) pairs a mask keeps, and how many tiles a tiled algorithm visits.

Two answers for every mask: a closed form in the sizes where one exists (full, causal,
window, local, strided, global tokens, random blocks, key ranges, butterfly, buckets in
expectation, documents of a given length, and intersections of causal with one of those), and an exact count at
concrete sizes by evaluating the mask on the block grid (numpy), used for unions and
other compositions. ``pairs`` counts elements; ``tiles`` counts Br×Bc blocks that hold
at least one kept pair (a tiled kernel visits exactly those).
"""

from __future__ import annotations

import math

import numpy as np
import sympy

from seqdsl.analysis import butterfly
from seqdsl.ir import mix as M

_ONE = sympy.Integer(1)


def closed_pairs(mask, nq: sympy.Expr, nk: sympy.Expr, bucket_count=None) -> sympy.Expr | None:
    """Kept pairs for one (batch, head), as a formula; None if no closed form is known.

    Formulas assume the usual regime: window, block and counts no larger than N, and a
    causal offset with 0 ≤ offset ≤ Nk − Nq (queries are the last positions).
    """
    terms = M.conjuncts(mask)
    structural = [t for t in terms if not isinstance(t, (M.Decay, M.Toeplitz))]
    if not structural:
        return nq * nk
    causal = [t for t in structural if isinstance(t, M.Causal)]
    rest = [t for t in structural if not isinstance(t, (M.Causal, M.Full))]
    if len(causal) > 1 or len(rest) > 1:
        return None
    c = causal[0] if causal else None
    if not rest:
        if c is None:
            return nq * nk
        o = c.offset
        return nq * (nq + 1) / 2 + nq * o
    r = rest[0]
    n = nq
    match r:
        case M.Window(size=w, block=blk) if blk == 1:
            if c is None:
                return n * (2 * w - 1) - w * (w - 1)
            return n * w - w * (w - 1) / 2
        case M.Window(size=w, block=blk):
            nb = n / blk
            blocks = nb * (2 * w - 1) - w * (w - 1) if c is None else None
            return None if blocks is None else blocks * blk * blk
        case M.Local(size=b):
            return n * b if c is None else n * (b + 1) / 2
        case M.Strided(stride=s):
            if c is None:
                return n * n / s
            return n * n / (2 * s) + n / 2
        case M.Global(count=g):
            if c is None:
                return 2 * g * n - g * g
            return n * (n + 1) / 2 - (n - g) * (n - g + 1) / 2 + (n - g) * g
        case M.RandomBlocks(count=k, block=b):
            return n * k * b if c is None else n * k * b / 2
        case M.KeyRange(start=a, stop=stop):
            width = (nk if stop is None else stop) - a
            return nq * width
        case M.QueryRange(start=a, stop=stop):
            b = nq if stop is None else stop
            return nk * (b - a) if c is None else (b - a) * (a + b + 1) / 2   # causal: row i keeps i + 1
        case M.Butterfly(block=b, factors=f, size=s):
            return butterfly.closed_pairs(nq, nk, b, f, s)
        case M.Buckets():
            if bucket_count is None:
                return None
            full = nq * nk / bucket_count
            return full if c is None else full / 2
        case M.BlockMap(block=b):
            return nq * b
        case M.Document(length=ld):
            # documents of ``length`` Ld each (default: one per row): N·Ld pairs, causal N·(Ld+1)/2
            ld = n if ld is None else ld
            return n * ld if c is None else n * (ld + 1) / 2
    return None


def closed_tiles(mask, nq, nk, br, bc) -> sympy.Expr | None:
    """Tiles of br × bc visited, as a formula (square tiles, sizes divisible)."""
    terms = [t for t in M.conjuncts(mask) if not isinstance(t, (M.Decay, M.Toeplitz))]
    tq, tk = nq / br, nk / bc
    kinds = {type(t) for t in terms} - {M.Full}
    if not kinds:
        return tq * tk
    if kinds == {M.Causal} and br == bc:
        o = next(t.offset for t in terms if isinstance(t, M.Causal))
        return tq * (tq + 1) / 2 + tq * o / bc   # offset: queries are the last Nq of Nk keys
    if kinds == {M.Causal, M.Window} and br == bc and all(t.block == 1 for t in terms if isinstance(t, M.Window)):
        w = next(t.size for t in terms if isinstance(t, M.Window))
        return tq * (w / br + 1) - (w / br) * (w / br + 1) / 2
    if (kinds == {M.Local} or kinds == {M.Local, M.Causal}) and br == bc:
        b = next(t.size for t in terms if isinstance(t, M.Local))
        causal = M.Causal in kinds
        per_row = sympy.Max(1, b / bc)   # a local block spans b/bc key tiles (or sits inside one)
        return tq * ((per_row + 1) / 2 if causal else per_row)
    return None


def leaf_tiles(mask, nq, nk, block, bucket_count=None) -> sympy.Expr | None:
    """Tiles of block × block one mask leaf touches (an upper bound where alignment
    matters); None if unknown (then all tiles)."""
    tq = nq / block
    match mask:
        case M.Full() | M.Decay() | M.Toeplitz() | M.Strided():
            return tq * nk / block
        case M.Causal(offset=o):
            return tq * (tq + 1) / 2 + tq * o / block
        case M.Window(size=w, block=blk) if blk == 1:
            return tq * (2 * w / block + 1)
        case M.Window(size=w, block=blk):
            return (nq / blk) * (2 * w - 1) * sympy.Max(1, blk / block) ** 2
        case M.Local(size=b):
            return tq * sympy.Max(1, b / block)
        case M.Global(count=g):
            return 2 * tq * sympy.Max(1, g / block)
        case M.RandomBlocks(count=k, block=b):
            return (nq / b) * k * sympy.Max(1, b / block) ** 2
        case M.KeyRange(start=a, stop=stop):
            return tq * (((nk if stop is None else stop) - a) / block + 1)
        case M.QueryRange(start=a, stop=stop):
            return (nk / block) * (((nq if stop is None else stop) - a) / block + 1)
        case M.Butterfly(block=b, factors=f, size=s):
            return (nq / b) * butterfly.tiles_per_row(nq, b, f, s) * sympy.Max(1, b / block) ** 2
        case M.Buckets():
            # sorted by bucket first (Reformer), the pairs pack into dense tiles
            pairs = closed_pairs(mask, nq, nk, bucket_count)
            return None if pairs is None else pairs / block ** 2 + tq
        case M.BlockMap(block=b):
            return tq * sympy.Max(1, b / block)
        case M.Document(length=ld) if ld is not None:
            # a document of Ld spans Ld/block key tiles per query tile, one more at its edges
            return tq * (ld / block + 1)
    return None


# ---- exact counts at concrete sizes ------------------------------------------------

def _predicate(mask, i: np.ndarray, j: np.ndarray, nb_rng) -> np.ndarray | None:
    """Boolean array for the mask at positions (i, j); None for data-dependent masks."""
    match mask:
        case M.Full():
            return np.ones(np.broadcast(i, j).shape, bool)
        case M.Causal(offset=o):
            return j <= i + int(o)
        case M.Window(size=w, block=blk):
            return np.abs(i // int(blk) - j // int(blk)) < int(w)
        case M.Local(size=b):
            return (i // int(b)) == (j // int(b))
        case M.Strided(stride=s):
            return (i - j) % int(s) == 0
        case M.Global(count=g):
            return (i < int(g)) | (j < int(g))
        case M.KeyRange(start=a, stop=b):
            hi = np.inf if b is None else int(b)
            return (j >= int(a)) & (j < hi) & (i >= 0)
        case M.QueryRange(start=a, stop=b):
            hi = np.inf if b is None else int(b)
            return (i >= int(a)) & (i < hi) & (j >= 0)
        case M.Butterfly(block=b, factors=f, size=None):
            return butterfly.meets((i // int(b)) ^ (j // int(b)), f)
        case M.RandomBlocks(count=k, block=b, seed=seed):
            return nb_rng(int(k), int(b), int(seed), i, j)
        case M.Decay() | M.Toeplitz():
            return np.ones(np.broadcast(i, j).shape, bool)
        case M.And(left=l, right=r):
            a, c = _predicate(l, i, j, nb_rng), _predicate(r, i, j, nb_rng)
            return None if a is None or c is None else a & c
        case M.Or(left=l, right=r):
            a, c = _predicate(l, i, j, nb_rng), _predicate(r, i, j, nb_rng)
            return None if a is None or c is None else a | c
    return None


def random_block_table(count: int, block: int, seed: int, nq_blocks: int, nk_blocks: int,
                       head: int | None = None, banned: np.ndarray | None = None) -> np.ndarray:
    """The key blocks each query block sees: drawn once, at compile time, from ``seed`` (and,
    per head, from the stream (seed, head), so that (seed, head) pairs never share a draw).
    ``banned`` [nq_blocks, nk_blocks]: blocks never drawn; a row with fewer free blocks than
    ``count`` takes them all, and its missing entries repeat its first one (−1 if none)."""
    rng = np.random.default_rng(seed if head is None else [seed, head])
    k = min(count, nk_blocks)
    if not nq_blocks:
        return np.zeros((0, k), int)
    if banned is None:
        return np.stack([rng.choice(nk_blocks, size=k, replace=False) for _ in range(nq_blocks)])
    rows = []
    for r in range(nq_blocks):
        free = np.flatnonzero(~banned[r])
        pick = rng.choice(free, size=min(k, free.size), replace=False) if free.size else np.zeros(0, int)
        fill = pick[0] if pick.size else -1
        rows.append(np.concatenate([pick, np.full(k - pick.size, fill, int)]))
    return np.stack(rows)


def _random_pred(nq: int, nk: int):
    cache: dict = {}

    def pred(count, block, seed, i, j):
        key = (count, block, seed)
        if key not in cache:
            table = random_block_table(count, block, seed, math.ceil(nq / block), math.ceil(nk / block))
            dense = np.zeros((table.shape[0], math.ceil(nk / block)), bool)
            for r, cols in enumerate(table):
                dense[r, cols] = True
            cache[key] = dense
        dense = cache[key]
        return dense[np.minimum(i // block, dense.shape[0] - 1), np.minimum(j // block, dense.shape[1] - 1)]
    return pred


MAX_EXACT = 1 << 26   # element pairs evaluated exactly; beyond that, pairs are counted per tile


def exact_counts(mask, nq: int, nk: int, br: int, bc: int) -> tuple[int, int] | None:
    """(kept pairs, visited tiles) at concrete sizes; None for data-dependent masks."""
    pred = _random_pred(nq, nk)
    tq, tk = math.ceil(nq / br), math.ceil(nk / bc)
    pairs = 0
    tiles = 0
    # Evaluate tile row by tile row to keep memory at O(br · nk).
    for r in range(tq):
        i = np.arange(r * br, min(nq, (r + 1) * br))[:, None]
        j = np.arange(nk)[None, :]
        keep = _predicate(mask, i, j, pred)
        if keep is None:
            return None
        keep = np.broadcast_to(keep, (i.shape[0], nk))
        pairs += int(keep.sum())
        pad = tk * bc - nk
        if pad:
            keep = np.pad(keep, ((0, 0), (0, pad)))
        tiles += int(keep.reshape(i.shape[0], tk, bc).any(axis=(0, 2)).sum())
    return pairs, tiles
