"""The flat block-butterfly pattern of ``butterfly(block, factors = k, size = s)``, shared by the
cost analysis (pair and non-zero counts) and the runtime masks (``codegen.masks.Butterfly``).

Two cells a and b of a butterfly meet when a XOR b is 0 or a power of two 2^t with t < k (the
union of the first k butterfly factors, each the identity plus the pairs that differ in bit t;
k unlimited by default). Where the cells are:

- no ``size`` (the default): the cells are the ``block``-sized blocks themselves (cell = i // block);
- ``size = s`` (a power of two): an s × s butterfly stretched over the matrix, as Pixelated
  Butterfly's ``FlatBlockButterflySparsityConfig(butterfly_size = s, n_factors = k, block)``
  (HazyResearch/fly, src/models/layers/blocksparse_linear.py): both sides are first padded to a
  multiple of ``block`` (n' = ⌈n / block⌉·block), row i lies in cell ⌊i·s / n'⌋ (cells of n'/s rows
  when s divides n', the released ``repeat``), and the element pattern is then rounded up to
  block × block blocks: a block is kept whole when any pair inside it is kept.

Either way the result is a grid of whole blocks, which is what every consumer reads.
"""

from __future__ import annotations

import math

import numpy as np
import sympy


def meets(x: np.ndarray, factors: int | None) -> np.ndarray:
    """a XOR b = ``x`` is 0 or a power of two below 2^factors (any power without a limit)."""
    ok = (x & (x - 1)) == 0
    return ok if factors is None else ok & (x < (1 << int(factors)))


def _cells(n: int, block: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last cell of every block of a side of length n (padded to whole blocks)."""
    padded = -(-n // block) * block
    starts = np.arange(0, padded, block)
    return starts * size // padded, (starts + block - 1) * size // padded


def block_grid(nq: int, nk: int, block: int, factors: int | None = None, size: int | None = None) -> np.ndarray:
    """[⌈nq/block⌉, ⌈nk/block⌉] bool: the blocks the pattern keeps (see the module docstring)."""
    a = np.arange(-(-nq // block))[:, None]
    c = np.arange(-(-nk // block))[None, :]
    if size is None:
        return meets(a ^ c, factors)
    cells = np.arange(size)
    grid = meets(cells[:, None] ^ cells[None, :], factors).astype(np.int64)
    csum = np.zeros((size + 1, size + 1), np.int64)          # 2-D prefix sums: any kept cell pair
    csum[1:, 1:] = grid.cumsum(0).cumsum(1)                  # in a rectangle of cells, O(1)
    r0, r1 = _cells(nq, block, size)
    c0, c1 = _cells(nk, block, size)
    r0, r1, c0, c1 = r0[:, None], r1[:, None] + 1, c0[None, :], c1[None, :] + 1
    return (csum[r1, c1] - csum[r0, c1] - csum[r1, c0] + csum[r0, c0]) > 0


def kept_pairs(nq: int, nk: int, block: int, factors: int | None = None, size: int | None = None) -> int:
    """Exact count of kept (row, column) pairs of an nq × nk matrix (edge blocks cropped)."""
    grid = block_grid(nq, nk, block, factors, size)
    rows = np.minimum(block, nq - np.arange(grid.shape[0]) * block)
    cols = np.minimum(block, nk - np.arange(grid.shape[1]) * block)
    return int(rows @ grid.astype(np.int64) @ cols)


class butterfly_pairs(sympy.Function):
    """Kept pairs of ``butterfly(block, factors, size)`` on an nq × nk matrix as a formula:
    it evaluates to the exact integer once the sizes are numbers (``kept_pairs``) and stays
    symbolic otherwise — no closed form is exact when the stretched cells straddle blocks
    (Pixelated Butterfly's 3072 × 768 weight: cells of 192 × 48, blocks of 32). ``factors`` and
    ``size`` are 0 when not given."""

    nargs = 5

    @classmethod
    def eval(cls, nq, nk, block, factors, size):
        args = (nq, nk, block, factors, size)
        if all(isinstance(v, sympy.Integer) for v in args):
            f, s = int(factors) or None, int(size) or None
            return sympy.Integer(kept_pairs(int(nq), int(nk), int(block), f, s))
        return None


def closed_pairs(nq, nk, block, factors, size) -> sympy.Expr:
    """Kept pairs as a formula: a closed form for the unstretched pattern on a square (n/b block
    rows, each meeting 1 + min(log2(n/b), k) blocks, n/b a power of two),
    the exact count at numeric sizes, ``butterfly_pairs(...)`` otherwise."""
    numeric = all(isinstance(sympy.sympify(v), sympy.Integer) for v in (nq, nk, block))
    if size is None and not numeric and sympy.simplify(nq - nk) == 0:
        return nq * block * tiles_per_row(nq, block, factors, None)
    return butterfly_pairs(nq, nk, block, sympy.Integer(factors or 0), sympy.Integer(size or 0))


def tiles_per_row(nq, block, factors, size):
    """Blocks a block row meets (the upper bound used for tile counts): 1 + the factors in use."""
    if size is not None:
        k = math.log2(size) if factors is None else factors
        return 1 + sympy.Integer(int(k))
    levels = sympy.log(nq / block, 2)
    return 1 + (levels if factors is None else sympy.Min(levels, factors))


__all__ = ["block_grid", "butterfly_pairs", "closed_pairs", "kept_pairs", "meets", "tiles_per_row"]
