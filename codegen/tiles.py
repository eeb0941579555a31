"""The tile grid of a tiled kernel: which (query block, key block) tiles of a mask hold kept
pairs (``TileGrid``), and the per-query-block lists a kernel visits (``BlockSchedule``).

The masks of :mod:`codegen.masks` classify tiles into a ``TileGrid``; a ``BlockSchedule``
is what the tiled softmax (codegen/softmax) and the Triton block maps iterate over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# ---- tiles ------------------------------------------------------------------------


@dataclass(frozen=True)
class TileGrid:
    """Per tile (query block r, key block c): ``any`` holds a kept pair, ``all`` every pair
    is kept, ``unc`` the two are bounds only (any may be too large, all too small).
    Shapes broadcast to [*lead, nqb, nkb]."""

    any: Tensor
    all: Tensor
    unc: Tensor

    @staticmethod
    def exact(any_: Tensor, all_: Tensor) -> TileGrid:
        any_, all_ = torch.broadcast_tensors(any_, all_)
        return TileGrid(any_, all_ & any_, torch.zeros((), dtype=torch.bool, device=any_.device))


def bounds(n: int, b: int, device=None) -> tuple[Tensor, Tensor]:
    """First and last index of every block of size b covering 0..n−1."""
    lo = torch.arange(0, n, b, device=device)
    return lo, torch.clamp(lo + b, max=n) - 1


def coarse_tiles(grid: Tensor, cq: int, ck: int, nq: int, nk: int, bq: int, bk: int) -> TileGrid:
    """Tile classification of a mask that is constant on coarse cells of cq × ck.

    ``grid`` [*lead, ceil(nq/cq), ceil(nk/ck)] says which coarse cells are kept; a tile is
    any/all of the coarse cells it intersects, counted with 2-D prefix sums (no element work;
    the work is the coarse grid's, (N/cell)², small for cells of 16 and more).
    """
    qlo, qhi = bounds(nq, bq, grid.device)
    klo, khi = bounds(nk, bk, grid.device)
    r0, r1 = (qlo // cq)[:, None], (qhi // cq)[:, None]
    c0, c1 = (klo // ck)[None, :], (khi // ck)[None, :]
    p = torch.nn.functional.pad(grid.to(torch.int64).cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    count = p[..., r1 + 1, c1 + 1] - p[..., r0, c1 + 1] - p[..., r1 + 1, c0] + p[..., r0, c0]
    area = (r1 - r0 + 1) * (c1 - c0 + 1)
    return TileGrid.exact(count > 0, count == area)


# ---- block schedules ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BlockSchedule:
    """For every query block, the key blocks a tiled kernel visits, ascending.

    ``index`` [*lead, nqb, kmax]: key block numbers, padded with −1; ``full`` the same shape:
    True where every pair of the tile is kept (no per-element mask needed). ``sched[r]`` is
    the list of (key block, full) of query block r (no leading dims); ``lead`` is () except
    for per-head random blocks ([H]).
    """

    nq: int
    nk: int
    bq: int
    bk: int
    index: Tensor
    full: Tensor

    @staticmethod
    def from_grid(g: TileGrid, nq: int, nk: int, bq: int, bk: int) -> BlockSchedule:
        nqb, nkb = -(-nq // bq), -(-nk // bk)
        any_, all_ = torch.broadcast_tensors(g.any, g.all)
        lead = any_.shape[:-2]
        any_ = any_.expand(*lead, nqb, nkb)
        all_ = all_.expand(*lead, nqb, nkb) & any_
        pos = torch.arange(nkb, device=any_.device)
        kmax = int(any_.sum(-1).max()) if any_.numel() else 0
        order = torch.where(any_, pos, pos + nkb).sort(-1).values[..., :kmax]
        listed = order < nkb
        index = torch.where(listed, order, -1)
        full = all_.gather(-1, order.clamp(max=nkb - 1)) & listed
        return BlockSchedule(nq, nk, bq, bk, index, full)

    @property
    def lead(self) -> tuple[int, ...]:
        return tuple(self.index.shape[:-2])

    def counts(self) -> Tensor:
        return (self.index >= 0).sum(-1)

    def __len__(self) -> int:
        return self.index.shape[-2]

    def __getitem__(self, r: int) -> list[tuple[int, bool]]:
        idx, full = self.index[..., r, :], self.full[..., r, :]
        if idx.dim() != 1:
            raise ValueError("this schedule has leading dims: index them first (sched.index[h])")
        return [(int(c), bool(f)) for c, f in zip(idx.tolist(), full.tolist()) if c >= 0]

    def __iter__(self):
        return (self[r] for r in range(len(self)))

    def grids(self) -> tuple[Tensor, Tensor]:
        """(listed, full) as dense [*lead, nqb, nkb] booleans (for tests and drawings)."""
        nkb = -(-self.nk // self.bk)
        shape = (*self.index.shape[:-1], nkb + 1)
        listed = torch.zeros(shape, dtype=torch.bool).scatter(-1, torch.where(self.index >= 0, self.index, nkb),
                                                                  True)[..., :nkb]
        full = torch.zeros(shape, dtype=torch.bool).scatter(-1, torch.where(self.full, self.index, nkb),
                                                                True)[..., :nkb]
        return listed, full

    def pairs_visited(self) -> int:
        """Tiles listed, summed over leading dims."""
        return int(self.counts().sum())
