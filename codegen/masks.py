"""Runtime masks: the mask algebra of ``seqdsl.ir.mix`` with concrete ints and tensors.

Every mask answers three questions at concrete sizes:

- ``keep(i, j, nq, nk, heads)``: the predicate on index tensors (the definition; shapes
  broadcast, data-dependent masks and per-head random blocks prepend their leading dims);
- ``dense(nq, nk)``: the boolean [..., nq, nk] matrix (for the materialised algorithm);
- ``blocks(nq, nk, bq, bk)``: the block schedule of a tiled kernel — for every query block
  the key blocks that hold a kept pair, each tagged *full* (every pair kept: no per-element
  mask) or *partial*.

The schedule is computed on the grid of tiles, never on the N×N grid: a structured leaf
classifies every tile from its corner coordinates in closed form (causal, window, local,
strided, global tokens, key ranges) or from a coarse grid of its own blocks with 2-D
prefix sums (random blocks, butterfly). ``&`` and ``|`` combine the classifications; the
only cells they cannot decide exactly (two partial tiles meeting) are marked *uncertain*
and, within a budget of element evaluations, settled by evaluating the predicate on those
tiles alone; beyond it they stay listed as partial (always correct, maybe slower).
Data-dependent masks (``Buckets``, ``Document``, ``BlockMap``) have no static schedule: ``blocks``
returns None and the caller picks another path (the tiled softmax sorts by bucket).

Conventions (as in ``seqdsl.analysis.masks``): i is the query index, j the key index,
both from 0; leading dims of data-dependent ids broadcast right-aligned against the batch
dims of q (heads = dim −3).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import sympy
import torch
from torch import Tensor

from codegen.tiles import BlockSchedule, TileGrid
from codegen.tiles import bounds as _bounds
from codegen.tiles import coarse_tiles as _coarse_tiles

__all__ = ["Mask", "Full", "Causal", "Window", "Local", "Strided", "Global", "RandomBlocks", "KeyRange", "QueryRange",
           "Butterfly", "Buckets", "Document", "BlockMap", "And", "Or", "BlockSchedule", "TileGrid", "from_ir",
           "conjuncts", "REFINE_BUDGET"]

REFINE_BUDGET = 1 << 24   # element pairs evaluated to settle uncertain tiles of a composition


# ---- the algebra ------------------------------------------------------------------


class Mask:
    """Base of the runtime masks. ``static``: the mask depends on sizes only (hashable,
    schedules and masks may be cached); otherwise it holds data tensors."""

    static: ClassVar[bool] = True

    def __and__(self, other: Mask) -> Mask:
        return And(self, other)

    def __or__(self, other: Mask) -> Mask:
        return Or(self, other)

    # -- to be provided by each mask
    def keep(self, i: Tensor, j: Tensor, nq: int, nk: int, heads: int | None = None) -> Tensor:
        """The predicate at query indices ``i`` and key indices ``j`` (broadcast), with
        ``self.lead(heads)`` prepended for data-dependent / per-head masks."""
        raise NotImplementedError

    def tiles(self, nq: int, nk: int, bq: int, bk: int, heads: int | None = None, device=None) -> TileGrid:
        """Classification of the bq × bk tiles (see :class:`TileGrid`)."""
        raise NotImplementedError

    def lead(self, heads: int | None = None) -> tuple[int, ...]:
        """Leading dims that ``keep`` prepends (() for the structured masks)."""
        return ()

    # -- derived
    def dense(self, nq: int, nk: int, device=None, heads: int | None = None) -> Tensor:
        """Boolean mask broadcastable to [*lead, nq, nk] (True = the pair is kept)."""
        i = torch.arange(nq, device=device)[:, None]
        j = torch.arange(nk, device=device)[None, :]
        return self.keep(i, j, nq, nk, heads)

    def blocks(self, nq: int, nk: int, bq: int, bk: int, heads: int | None = None) -> BlockSchedule | None:
        """The block schedule of a tiled kernel; None for data-dependent masks."""
        if not self.static:
            return None
        return BlockSchedule.from_grid(self.settled_tiles(nq, nk, bq, bk, heads), nq, nk, bq, bk)

    def settled_tiles(self, nq: int, nk: int, bq: int, bk: int, heads: int | None = None, device=None,
                      budget: int = REFINE_BUDGET) -> TileGrid:
        """``tiles`` with the uncertain cells settled by evaluating the predicate on them
        (when they hold at most ``budget`` pairs, counted over the leading dims)."""
        g = self.tiles(nq, nk, bq, bk, heads, device)
        if not bool(g.unc.any()):
            return g
        nqb, nkb = -(-nq // bq), -(-nk // bk)
        shape = torch.broadcast_shapes(g.any.shape, g.all.shape, g.unc.shape, (nqb, nkb))
        anyg, allg, unc = (t.expand(shape) for t in (g.any, g.all, g.unc))
        open_ = (unc & anyg & ~allg).reshape(-1, nqb, nkb).any(0)
        cells = open_.nonzero()
        if len(cells) * bq * bk * max(1, math.prod(shape[:-2])) > budget:
            return g
        anyg, allg = anyg.clone(), allg.clone()
        for part in torch.split(cells, max(1, (1 << 20) // (bq * bk))):
            r, c = part[:, 0], part[:, 1]
            i = (r[:, None] * bq + torch.arange(bq, device=r.device))[:, :, None]
            j = (c[:, None] * bk + torch.arange(bk, device=r.device))[:, None, :]
            valid = (i < nq) & (j < nk)
            kept = self.keep(i.clamp(max=nq - 1), j.clamp(max=nk - 1), nq, nk, heads) & valid
            count, area = kept.sum((-1, -2)), valid.sum((-1, -2))
            anyg[..., r, c] = count > 0
            allg[..., r, c] = count == area
        return TileGrid.exact(anyg, allg)


@dataclass(frozen=True)
class Full(Mask):
    def keep(self, i, j, nq, nk, heads=None):
        return torch.ones((), dtype=torch.bool, device=i.device).expand(torch.broadcast_shapes(i.shape, j.shape))

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        t = torch.ones((1, 1), dtype=torch.bool, device=device)
        return TileGrid.exact(t, t)


@dataclass(frozen=True)
class Causal(Mask):
    """j ≤ i + offset."""

    offset: int = 0

    def keep(self, i, j, nq, nk, heads=None):
        return j <= i + self.offset

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        qlo, qhi = _bounds(nq, bq, device)
        klo, khi = _bounds(nk, bk, device)
        return TileGrid.exact(klo[None, :] <= qhi[:, None] + self.offset, khi[None, :] <= qlo[:, None] + self.offset)


@dataclass(frozen=True)
class Window(Mask):
    """|⌊i/block⌋ − ⌊j/block⌋| < size (a band of tokens, or of blocks when block > 1)."""

    size: int
    block: int = 1

    def keep(self, i, j, nq, nk, heads=None):
        return (i // self.block - j // self.block).abs() < self.size

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        qlo, qhi = _bounds(nq, bq, device)
        klo, khi = _bounds(nk, bk, device)
        b, w = self.block, self.size
        if w <= 0:
            none = torch.zeros((1, 1), dtype=torch.bool, device=device)
            return TileGrid.exact(none, none)
        dlo = (qlo // b)[:, None] - (khi // b)[None, :]     # the block distances a tile spans
        dhi = (qhi // b)[:, None] - (klo // b)[None, :]
        return TileGrid.exact((dlo < w) & (dhi > -w), (dlo > -w) & (dhi < w))


@dataclass(frozen=True)
class Local(Mask):
    """⌊i/size⌋ = ⌊j/size⌋."""

    size: int

    def keep(self, i, j, nq, nk, heads=None):
        return i // self.size == j // self.size

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        qlo, qhi = _bounds(nq, bq, device)
        klo, khi = _bounds(nk, bk, device)
        s = self.size
        a0, a1 = (qlo // s)[:, None], (qhi // s)[:, None]
        b0, b1 = (klo // s)[None, :], (khi // s)[None, :]
        return TileGrid.exact((a0 <= b1) & (b0 <= a1), (a0 == a1) & (b0 == b1) & (a0 == b0))


@dataclass(frozen=True)
class Strided(Mask):
    """(i − j) mod stride = 0."""

    stride: int

    def keep(self, i, j, nq, nk, heads=None):
        return (i - j) % self.stride == 0

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        qlo, qhi = _bounds(nq, bq, device)
        klo, khi = _bounds(nk, bk, device)
        s = self.stride
        dlo = qlo[:, None] - khi[None, :]       # every difference in [dlo, dhi] occurs
        dhi = qhi[:, None] - klo[None, :]
        any_ = (dhi // s) * s >= dlo
        all_ = (dlo == dhi) & (dlo % s == 0) if s > 1 else torch.ones_like(any_)
        return TileGrid.exact(any_, all_)


@dataclass(frozen=True)
class Global(Mask):
    """Global tokens: i < count or j < count."""

    count: int

    def keep(self, i, j, nq, nk, heads=None):
        return (i < self.count) | (j < self.count)

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        qlo, qhi = _bounds(nq, bq, device)
        klo, khi = _bounds(nk, bk, device)
        g = self.count
        return TileGrid.exact((qlo[:, None] < g) | (klo[None, :] < g), (qhi[:, None] < g) | (khi[None, :] < g))


@dataclass(frozen=True)
class KeyRange(Mask):
    """start ≤ j < stop for every query (stop None: to the last key)."""

    start: int
    stop: int | None = None

    def _stop(self, nk: int) -> int:
        return nk if self.stop is None else self.stop

    def keep(self, i, j, nq, nk, heads=None):
        k = (j >= self.start) & (j < self._stop(nk))
        return k.expand(torch.broadcast_shapes(i.shape, j.shape))

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        klo, khi = _bounds(nk, bk, device)
        a, b = self.start, self._stop(nk)
        return TileGrid.exact(((klo < b) & (khi >= a) & (b > a))[None, :], ((klo >= a) & (khi < b))[None, :])


@dataclass(frozen=True)
class QueryRange(Mask):
    """start ≤ i < stop sees every key (stop None: to the last query)."""

    start: int
    stop: int | None = None

    def _stop(self, nq: int) -> int:
        return nq if self.stop is None else self.stop

    def keep(self, i, j, nq, nk, heads=None):
        k = (i >= self.start) & (i < self._stop(nq))
        return k.expand(torch.broadcast_shapes(i.shape, j.shape))

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        qlo, qhi = _bounds(nq, bq, device)
        a, b = self.start, self._stop(nq)
        return TileGrid.exact(((qlo < b) & (qhi >= a) & (b > a))[:, None], ((qlo >= a) & (qhi < b))[:, None])


@dataclass(frozen=True)
class Butterfly(Mask):
    """Whole blocks of ``block``: block a sees block b when a XOR b is 0 or a power of two below
    2^factors; with ``size``, the blocks an s × s butterfly stretched over [nq, nk] touches
    (``seqdsl.analysis.butterfly``, the one definition the analysis counts)."""

    block: int
    factors: int | None = None
    size: int | None = None

    def grid(self, nq: int, nk: int, device=None) -> Tensor:
        from seqdsl.analysis.butterfly import block_grid
        return torch.as_tensor(block_grid(nq, nk, self.block, self.factors, self.size), device=device)

    def keep(self, i, j, nq, nk, heads=None):
        g = self.grid(nq, nk, i.device)
        return g[(i // self.block).clamp(max=g.shape[0] - 1), (j // self.block).clamp(max=g.shape[1] - 1)]

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        return _coarse_tiles(self.grid(nq, nk, device), self.block, self.block, nq, nk, bq, bk)


@functools.lru_cache(maxsize=16)
def _touched_blocks(mask: Mask, block: int, nq_blocks: int, nk_blocks: int):
    """[nq_blocks, nk_blocks] numpy bool: the blocks in which ``mask`` keeps some pair."""
    n_q, n_k = nq_blocks * block, nk_blocks * block
    rows = []
    for start in range(0, n_q, 1024):             # a band of query rows at a time (bounded memory)
        i = torch.arange(start, min(n_q, start + 1024))[:, None]
        kept = mask.keep(i, torch.arange(n_k)[None, :], n_q, n_k)
        rows.append(kept.reshape(-1, block, nk_blocks, block).any(3).any(1))
    return torch.cat(rows).numpy()


@functools.lru_cache(maxsize=64)
def _random_grid(count: int, block: int, seed: int, nq_blocks: int, nk_blocks: int, head: int | None = None,
                 exclude: Mask | None = None) -> Tensor:
    """[nq_blocks, nk_blocks] bool: the draw of ``seqdsl.analysis.masks.random_block_table``;
    ``exclude``: a mask whose blocks (any kept pair in them) are never drawn."""
    from seqdsl.analysis.masks import random_block_table

    banned = None if exclude is None else _touched_blocks(exclude, block, nq_blocks, nk_blocks)
    table = torch.as_tensor(random_block_table(count, block, seed, nq_blocks, nk_blocks, head, banned),
                            dtype=torch.long)
    grid = torch.zeros(nq_blocks, nk_blocks, dtype=torch.bool)
    if table.numel():
        grid.scatter_(1, table.clamp(min=0), table >= 0)
    return grid


@dataclass(frozen=True)
class RandomBlocks(Mask):
    """Each query block (of ``block``) sees ``count`` key blocks drawn from ``seed``;
    ``per_head``: head h draws from the stream (seed, h) (then ``heads`` is required)."""

    count: int
    block: int
    seed: int = 0
    per_head: bool = False
    exclude: Mask | None = None    # blocks this mask touches are never drawn

    def lead(self, heads=None):
        return (self._heads(heads),) if self.per_head else ()

    def _heads(self, heads) -> int:
        if heads is None:
            raise ValueError("per-head random blocks need the number of heads (heads=...)")
        return heads

    def grid(self, nq: int, nk: int, heads: int | None = None, device=None) -> Tensor:
        """Kept coarse blocks: [nqb, nkb], or [H, nqb, nkb] per head."""
        nqb, nkb = -(-nq // self.block), -(-nk // self.block)
        if not self.per_head:
            return _random_grid(self.count, self.block, self.seed, nqb, nkb, None, self.exclude).to(device)
        return torch.stack([_random_grid(self.count, self.block, self.seed, nqb, nkb, h, self.exclude)
                            for h in range(self._heads(heads))]).to(device)

    def keep(self, i, j, nq, nk, heads=None):
        g = self.grid(nq, nk, heads, i.device)
        return g[..., i // self.block, j // self.block]

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        return _coarse_tiles(self.grid(nq, nk, heads, device), self.block, self.block, nq, nk, bq, bk)


@dataclass(frozen=True, eq=False)
class Buckets(Mask):
    """ids_i == ids_j, ids a data-dependent integer tensor [..., N] (Reformer's hash buckets)."""

    ids: Tensor
    static: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"Buckets(ids[{', '.join(map(str, self.ids.shape))}])"

    def lead(self, heads=None):
        return tuple(self.ids.shape[:-1])

    def _check(self, nq: int, nk: int) -> None:
        n = self.ids.shape[-1]
        if not nq == nk == n:
            raise ValueError(f"buckets: ids cover {n} positions but the attention is {nq} × {nk}; "
                             "bucket masks are for self-attention (Nq = Nk = N)")

    def keep(self, i, j, nq, nk, heads=None):
        self._check(nq, nk)
        return self.ids[..., i] == self.ids[..., j]

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        """Bounds from each tile's range of ids: exact only when the ids are sorted (the
        tiled softmax sorts them first); with unsorted ids nearly every tile is listed."""
        self._check(nq, nk)
        qlo, qhi = self.ranges(bq)
        klo, khi = self.ranges(bk)
        any_ = (qlo[..., :, None] <= khi[..., None, :]) & (klo[..., None, :] <= qhi[..., :, None])
        all_ = (qlo == qhi)[..., :, None] & (klo == khi)[..., None, :] & (qlo[..., :, None] == klo[..., None, :])
        return TileGrid(any_, all_, any_ & ~all_)

    def ranges(self, b: int) -> tuple[Tensor, Tensor]:
        """(min, max) of the ids in every block of b positions."""
        n = self.ids.shape[-1]
        nb = -(-n // b)
        pad = nb * b - n
        info = torch.iinfo(self.ids.dtype)
        lo = torch.nn.functional.pad(self.ids, (0, pad), value=info.max)
        hi = torch.nn.functional.pad(self.ids, (0, pad), value=info.min)
        return lo.reshape(*lo.shape[:-1], nb, b).amin(-1), hi.reshape(*hi.shape[:-1], nb, b).amax(-1)


@dataclass(frozen=True, eq=False)
class Document(Mask):
    """Same document: ids_i == ids_j, ids [..., N] the document of every position of a packed
    row (``codegen.varlen``). Unlike bucket ids, document ids are runs along the sequence, so
    the tiles come from each block's first and last id without sorting: exact (whole tiles
    across documents skipped, tiles inside one document unmasked) when the ids are consecutive
    and non-decreasing, as ``codegen.varlen.Documents`` numbers them; a safe bound otherwise."""

    ids: Tensor
    static: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"Document(ids[{', '.join(map(str, self.ids.shape))}])"

    def lead(self, heads=None):
        return tuple(self.ids.shape[:-1])

    def _check(self, nq: int, nk: int) -> None:
        n = self.ids.shape[-1]
        if not nq == nk == n:
            raise ValueError(f"document: ids cover {n} positions but the attention is {nq} × {nk}; "
                             "a document mask is for self-attention over the packed sequence")

    def keep(self, i, j, nq, nk, heads=None):
        self._check(nq, nk)
        return self.ids[..., i] == self.ids[..., j]

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        self._check(nq, nk)
        buckets = Buckets(self.ids)
        qlo, qhi = buckets.ranges(bq)
        klo, khi = buckets.ranges(bk)
        any_ = (qlo[..., :, None] <= khi[..., None, :]) & (klo[..., None, :] <= qhi[..., :, None])
        all_ = (qlo == qhi)[..., :, None] & (klo == khi)[..., None, :] & (qlo[..., :, None] == klo[..., None, :])
        step = self.ids[..., 1:] - self.ids[..., :-1]
        if bool(((step == 0) | (step == 1)).all()):      # runs of consecutive ids: the bounds are exact
            return TileGrid.exact(any_, all_)
        return TileGrid(any_, all_, any_ & ~all_)


@dataclass(frozen=True, eq=False)
class BlockMap(Mask):
    """Query block ⌊i/block⌋ sees key block ids[⌊i/block⌋]; ids [..., nblocks] is data."""

    ids: Tensor
    block: int
    static: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"BlockMap(ids[{', '.join(map(str, self.ids.shape))}], block={self.block})"

    def lead(self, heads=None):
        return tuple(self.ids.shape[:-1])

    def _check(self, nq: int) -> None:
        need = -(-nq // self.block)
        if self.ids.shape[-1] < need:
            raise ValueError(f"block_map: ids hold {self.ids.shape[-1]} blocks, {need} query blocks of "
                             f"{self.block} need one each")

    def keep(self, i, j, nq, nk, heads=None):
        self._check(nq)
        return self.ids[..., i // self.block] == j // self.block

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        self._check(nq)
        ncq, nck = -(-nq // self.block), -(-nk // self.block)
        grid = self.ids[..., :ncq, None] == torch.arange(nck, device=self.ids.device)
        return _coarse_tiles(grid, self.block, self.block, nq, nk, bq, bk)


@dataclass(frozen=True)
class And(Mask):
    a: Mask
    b: Mask

    @property
    def static(self) -> bool:
        return self.a.static and self.b.static

    def lead(self, heads=None):
        return _lead(self.a.lead(heads), self.b.lead(heads))

    def keep(self, i, j, nq, nk, heads=None):
        return self.a.keep(i, j, nq, nk, heads) & self.b.keep(i, j, nq, nk, heads)

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        x, y = self.a.tiles(nq, nk, bq, bk, heads, device), self.b.tiles(nq, nk, bq, bk, heads, device)
        any_, all_ = x.any & y.any, x.all & y.all
        # two partial tiles may share no kept pair: the intersection is only a bound there
        unc = any_ & ~all_ & (x.unc | y.unc | (~x.all & ~y.all))
        return TileGrid(any_, all_, unc)


@dataclass(frozen=True)
class Or(Mask):
    a: Mask
    b: Mask

    @property
    def static(self) -> bool:
        return self.a.static and self.b.static

    def lead(self, heads=None):
        return _lead(self.a.lead(heads), self.b.lead(heads))

    def keep(self, i, j, nq, nk, heads=None):
        return self.a.keep(i, j, nq, nk, heads) | self.b.keep(i, j, nq, nk, heads)

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        x, y = self.a.tiles(nq, nk, bq, bk, heads, device), self.b.tiles(nq, nk, bq, bk, heads, device)
        any_, all_ = x.any | y.any, x.all | y.all
        # two partial tiles may together cover the whole tile: full-ness is only a bound there
        unc = any_ & ~all_ & (x.unc | y.unc | (x.any & y.any))
        return TileGrid(any_, all_, unc)


def _lead(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(a, b))


def conjuncts(m: Mask) -> list[Mask]:
    """The terms of a top-level intersection."""
    return conjuncts(m.a) + conjuncts(m.b) if isinstance(m, And) else [m]


def simplify(m: Mask) -> Mask:
    """Drop ``Full`` from intersections and collapse unions with it (structure only)."""
    if isinstance(m, (And, Or)):
        a, b = simplify(m.a), simplify(m.b)
        if isinstance(m, And):
            return b if isinstance(a, Full) else a if isinstance(b, Full) else And(a, b)
        return a if isinstance(a, Full) else b if isinstance(b, Full) else Or(a, b)
    return m


# ---- from the IR ---------------------------------------------------------------------


def from_ir(mask_ir, sizes: dict[str, int], tensors: dict[str, Tensor] | None = None) -> Mask:
    """The runtime mask of a ``seqdsl.ir.mix`` mask: sympy sizes evaluated with ``sizes``
    (by symbol name), ``Ref`` roles looked up in ``tensors``."""
    from seqdsl.ir import mix as M

    tensors = tensors or {}

    def num(x) -> int:
        e = sympy.sympify(x)
        e = e.subs({s: sizes[s.name] for s in e.free_symbols if s.name in sizes})
        if not e.is_number:
            missing = ", ".join(sorted(s.name for s in e.free_symbols))
            raise ValueError(f"mask size {x} needs a value for {missing}")
        if e != sympy.floor(e):
            raise ValueError(f"mask size {x} = {e} is not an integer")
        return int(e)

    def ref(r) -> Tensor:
        if r.role not in tensors:
            raise ValueError(f"mask needs the tensor {r} (known: {', '.join(sorted(tensors)) or 'none'})")
        return tensors[r.role]

    def go(m) -> Mask:
        match m:
            case M.Full():
                return Full()
            case M.Causal(offset=o):
                return Causal(num(o))
            case M.Window(size=s, block=b):
                return Window(num(s), num(b))
            case M.Local(size=s):
                return Local(num(s))
            case M.Strided(stride=s):
                return Strided(num(s))
            case M.Global(count=c):
                return Global(num(c))
            case M.RandomBlocks(count=c, block=b, seed=seed, per_head=ph, exclude=ex):
                return RandomBlocks(num(c), num(b), int(seed), bool(ph), None if ex is None else go(ex))
            case M.KeyRange(start=a, stop=b):
                return KeyRange(num(a), None if b is None else num(b))
            case M.QueryRange(start=a, stop=b):
                return QueryRange(num(a), None if b is None else num(b))
            case M.Butterfly(block=b, factors=f, size=sz):
                return Butterfly(num(b), f, sz)
            case M.Buckets(ids=r):
                return Buckets(ref(r))
            case M.BlockMap(ids=r, block=b):
                return BlockMap(ref(r), num(b))
            case M.Document(ids=r):
                return Document(ref(r))
            case M.And(left=a, right=b):
                return And(go(a), go(b))
            case M.Or(left=a, right=b):
                return Or(go(a), go(b))
        raise ValueError(f"{m} is not a boolean mask (decays and Toeplitz kernels weight M, they do not mask it)")

    return go(mask_ir)
