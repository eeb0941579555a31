"""Plans of the tiled softmax: which tiles each step of ``tiled.py`` computes.

For a mask at concrete sizes, the block schedule (``codegen.masks``) lists for every query
block the key tiles holding a kept pair, full or partial. A :class:`Plan` groups that work
into *steps*, each one batched call of a chunk kernel over many query blocks:

- full steps: full tiles, no mask at all; when a group of query blocks sees the same tiles
  the keys are read once and the group runs as one long block;
- masked steps: the rest (partial tiles, and full ones left over from the chunking), with a
  boolean mask from the predicate on those tiles only (O(N · chunk · bk) elements, cached
  for static masks while it fits ``MASK_CACHE_BYTES``).

Large regions of full tiles are cut into aligned squares (a quadtree: a causal triangle is
1, 2, 4, … squares of halving sides), batched by side into one call each. A step whose
queries and keys advance by constant strides is run on strided views of q, k, v and the
output instead of gathered copies (squares, sliding windows, causal diagonals); window
tiles outside the keys are zero padding (``Plan.front`` / ``Plan.back``) and masked.
Plans of static masks are cached (LRU).

Content-based masks (buckets & structured terms) are planned in sorted order
(:class:`SortedBuckets`): each bucket's pairs then pack into a few tiles near the diagonal.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from codegen import masks as M

CHUNK_KEYS = 512                  # keys per query block in one step
MASK_CACHE_BYTES = 32 << 20       # masks of one plan kept between calls up to this size
_PLANS: OrderedDict = OrderedDict()
_PLAN_CACHE_SIZE = 8              # plans kept (LRU): at most ~8 × MASK_CACHE_BYTES of masks


# ---- plans -------------------------------------------------------------------------


@dataclass(eq=False)
class Step:
    """G groups; group m is g query tiles ``rows[m]`` against c key tiles ``kidx[m]``
    (tile numbers count the plan's front padding). A kernel call sees [B, H, G, g·bq, D]
    queries and [B, H, G, c·bk, D] keys."""

    rows: Tensor                  # [G, g] query tiles
    kidx: Tensor                  # [G, c] key tiles
    masked: bool
    first: bool                   # no row of this step was visited before
    valid: Tensor | None = None   # [G, c]: tiles given to this step (the others are masked)
    q_view: tuple[int, int] | None = None   # rows[m] = r0 + m·dr + 0..g−1, dr ≥ g: a strided view
    k_view: tuple[int, int] | None = None   # kidx[m] = t0 + m·dt + 0..c−1: a strided view
    keep: Tensor | None = None    # cached [Lb, Lh, G, L, S] predicate (masked steps)
    dead: Tensor | None = None    # cached [Lb, Lh, G, L]: rows with no kept key in this step
    additive: dict = field(default_factory=dict)   # dtype → cached additive mask
    causal: bool = False          # square groups whose predicate is exactly j ≤ i: the fused kernel's causal mode


@dataclass(eq=False)
class Plan:
    nq: int
    nk: int
    bq: int
    bk: int
    steps: list[Step]
    mask: M.Mask
    heads: int
    batch_shape: tuple[int, ...]
    front: int = 0                # zero tiles before the keys (tile numbers of steps count them)
    back: int = 0                 # and after


def to_bh(t: Tensor, nlead: int, batch_shape: tuple[int, ...]) -> Tensor:
    """A tensor [*L, *rest] whose L broadcasts right-aligned against ``batch_shape`` →
    [Lb, Lh, *rest] with Lb ∈ {1, B}, Lh ∈ {1, H} (B the product of the batch dims)."""
    rest = t.shape[nlead:]
    lead = (1,) * (len(batch_shape) - nlead) + tuple(t.shape[:nlead])
    if len(lead) > len(batch_shape):
        raise ValueError(f"mask leading dims {tuple(t.shape[:nlead])} exceed the batch dims {batch_shape}")
    t = t.reshape(*lead, *rest)
    heads = lead[-1] if lead else 1
    outer = lead[:-1]
    if all(d == 1 for d in outer):
        return t.reshape(1, heads, *rest)
    full = tuple(batch_shape[:-1])
    return t.expand(*full, heads, *rest).reshape(math.prod(full), heads, *rest)


def _grids(mask: M.Mask, nq: int, nk: int, bq: int, bk: int, heads: int) -> tuple[Tensor, Tensor]:
    """(listed, full) tiles [nqb, nkb], united over the mask's leading dims."""
    nqb, nkb = -(-nq // bq), -(-nk // bk)
    # data-dependent masks change every call: no element work to sharpen their bounds
    g = mask.settled_tiles(nq, nk, bq, bk, heads, budget=M.REFINE_BUDGET if mask.static else 0)
    any_, all_ = torch.broadcast_tensors(g.any, g.all)
    lead = any_.shape[:-2]
    any_, all_ = any_.expand(*lead, nqb, nkb), all_.expand(*lead, nqb, nkb)
    if lead:
        any_, all_ = any_.flatten(0, -3).any(0), all_.flatten(0, -3).all(0)
    all_ = all_ & any_
    if nk % bk:                  # the last tile holds padding keys: it always needs a mask
        all_ = all_.clone()
        all_[:, -1] = False
    return any_.cpu(), all_.cpu()


def _squares(full: Tensor, smin: int) -> list[tuple[int, int, int]]:
    """Aligned squares (r0, c0, side) of full tiles with side ≥ smin, from a quadtree over
    the tile grid (2-D prefix sums test a square in O(1)): a causal triangle becomes
    1, 2, 4, … squares of halving sides, full attention one square."""
    nqb, nkb = full.shape
    if min(nqb, nkb) < smin:
        return []
    p = np.pad(full.numpy().astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    side = 1 << max(nqb, nkb).bit_length()
    out, todo = [], [(0, 0, side)]
    while todo:
        r0, c0, n = todo.pop()
        r1, c1 = min(r0 + n, nqb), min(c0 + n, nkb)
        if r0 >= r1 or c0 >= c1:
            continue
        count = p[r1, c1] - p[r0, c1] - p[r1, c0] + p[r0, c0]
        if count == 0:
            continue
        if count == n * n and r0 + n <= nqb and c0 + n <= nkb:
            out.append((r0, c0, n))
        elif n // 2 >= smin:
            h = n // 2
            todo += [(r0, c0, h), (r0, c0 + h, h), (r0 + h, c0, h), (r0 + h, c0 + h, h)]
    return out


def _square_steps(squares: list[tuple[int, int, int]]) -> list[tuple[Tensor, Tensor, tuple, tuple]]:
    """Squares of one side whose corners advance by a constant (dr ≥ side, dc) batch into one
    step of strided views: (rows [G, g], kidx [G, c], q_view, k_view) per batch."""
    out = []
    for n in sorted({s for _, _, s in squares}, reverse=True):
        # along each diagonal (constant r − c: a causal level, a band) corners advance evenly
        corners = sorted(((r, c) for r, c, s in squares if s == n), key=lambda rc: (rc[0] - rc[1], rc[0]))
        i = 0
        while i < len(corners):
            j = i + 1
            if j < len(corners) and corners[j][0] - corners[i][0] >= n:
                dr, dc = corners[j][0] - corners[i][0], corners[j][1] - corners[i][1]
                while j < len(corners) and corners[j][0] - corners[j - 1][0] == dr and \
                        corners[j][1] - corners[j - 1][1] == dc:
                    j += 1
            else:
                dr, dc = n, 0
            r0, c0 = corners[i]
            m = torch.arange(j - i)[:, None]
            out.append((r0 + m * dr + torch.arange(n), c0 + m * dc + torch.arange(n), (r0, dr), (c0, dc)))
            i = j
    return out


def _windows(rows: Tensor, kidx: Tensor, valid: Tensor, C: int) -> tuple[Tensor, Tensor, tuple[int, int]] | None:
    """Re-express per-row tiles as windows of C consecutive tiles starting at st_r = a·r + b
    (rows consecutive), so that the keys are a strided view, not a gathered copy. Returns
    (kidx, valid, (st_0, a)) or None; window tiles not given to the step become invalid
    (masked) and may lie outside 0..nkb−1 (virtual padding tiles)."""
    R = len(rows)
    if R > 1 and not bool((rows[1:] - rows[:-1] == 1).all()):
        return None
    big = 1 << 40
    lo = torch.where(valid, kidx, big).amin(1)
    hi = torch.where(valid, kidx, -big).amax(1)
    if int((hi - lo).max()) >= C:
        return None
    for st in (hi - C + 1, lo):
        d = st[1:] - st[:-1]
        if R == 1 or (bool((d == d[0]).all()) and int(d[0]) >= 0):
            win = st[:, None] + torch.arange(C)
            given = ((win[:, :, None] == kidx[:, None, :]) & valid[:, None, :]).any(-1)
            return win, given, (int(st[0]), int(d[0]) if R > 1 else 0)
    return None


def _diagonal_squares(mask: M.Mask, any_: Tensor, all_: Tensor, open_: Tensor, nq: int, nk: int, bq: int, bk: int,
                      heads: int, side: int) -> list[tuple[int, int, int]]:
    """Aligned squares (r0, r0, side) on the diagonal whose predicate is exactly the causal
    triangle j ≤ i for every head: tiles below the diagonal full, above it empty, the
    diagonal tiles lower-triangular (checked element by element, N·bq booleans), all of
    them still open (``open_``: not taken by an earlier step), and nothing of their rows
    left outside the square (else those rows need a masked step anyway, and one wider
    masked step is cheaper than a triangle plus a masked remainder: a sliding window)."""
    if not mask.static or bq != bk:
        return []
    nt = min(nq // bq, nk // bk)                          # whole tiles on the diagonal
    if nt < side:
        return []
    tri = torch.ones(bq, bq, dtype=torch.bool).tril_()
    a = torch.arange(bq)
    diag = torch.empty(nt, dtype=torch.bool)
    for t0 in range(0, nt, 1024):                         # pieces of ≤ 1024·bq² booleans
        t = torch.arange(t0, min(nt, t0 + 1024))[:, None, None] * bq
        eq = mask.keep(t + a[:, None], t + a[None, :], nq, nk, heads) == tri                # [*lead, T, bq, bq]
        eq = eq.broadcast_to(torch.broadcast_shapes(eq.shape, (len(t), bq, bq)))
        diag[t0:t0 + len(t)] = eq.reshape(-1, len(t), bq * bq).all(2).all(0)
    lower = torch.ones(side, side, dtype=torch.bool).tril_()
    below, above = lower.tril(-1), ~lower
    out = []
    for r0 in range(0, nt - side + 1, side):
        sq = slice(r0, r0 + side)
        if bool(diag[sq].all()) and bool(all_[sq, sq][below].all()) and not bool(any_[sq, sq][above].any()) \
                and bool(open_[sq, sq][lower].all()) and not bool(open_[sq, :r0].any()) \
                and not bool(open_[sq, r0 + side:].any()):
            out.append((r0, r0, side))
    return out


def make_plan(mask: M.Mask, nq: int, nk: int, bq: int, bk: int, heads: int, batch_shape: tuple[int, ...],
              chunk_keys: int = CHUNK_KEYS, device=None) -> Plan:
    """The steps of the tiled algorithm for ``mask`` (cached for static masks):

    1. squares of full tiles (side ≥ chunk/2 tiles), batched by side: no mask, strided views;
       then diagonal squares of that side whose predicate is the causal triangle (no mask
       tensor: the fused kernel's causal mode);
    2. the other full tiles, ``chunk`` at a time per query tile: no mask;
    3. the rest (partial tiles, full ones left over), ``chunk`` at a time, with a mask.
    """
    key = None
    if mask.static:
        key = (mask, nq, nk, bq, bk, heads, tuple(batch_shape) if mask.lead(heads) else (), chunk_keys,
               str(device))
        if key in _PLANS:
            _PLANS.move_to_end(key)
            return _PLANS[key]
    any_, all_ = _grids(mask, nq, nk, bq, bk, heads)
    nqb, nkb = any_.shape
    C = max(1, chunk_keys // bk)
    pos = torch.arange(nkb)
    steps: list[Step] = []
    seen = torch.zeros(nqb, dtype=torch.bool)

    def add(rows, kidx, masked, valid=None, q_view=None, k_view=None, causal=False) -> None:
        first = not bool(seen[rows].any())
        seen[rows.reshape(-1)] = True
        steps.append(Step(rows, kidx, masked, first, valid if masked else None, q_view, k_view, causal=causal))

    def add_rows(rows: Tensor, kidx: Tensor, masked: bool, valid: Tensor) -> None:
        """Per-row tiles [R, c]: shared by all rows, strided windows, or gathered."""
        if bool((kidx == kidx[:1]).all()) and bool(valid.all()):
            consecutive = bool((rows == rows[0] + torch.arange(len(rows))).all())
            add(rows[None], kidx[:1], masked, valid[:1], (int(rows[0]), len(rows)) if consecutive else None)
            return
        win = _windows(rows, kidx, valid, kidx.shape[1])
        if win is None:
            add(rows[:, None], kidx, masked, valid)
        else:
            kidx, valid, k_view = win
            add(rows[:, None], kidx, masked or not bool(valid.all()), valid, (int(rows[0]), 1), k_view)

    # 1. squares of full tiles, then causal squares on the diagonal
    todo, partial = all_.clone(), any_ & ~all_
    side = max(2, C // 2)
    for rows, kidx, q_view, k_view in _square_steps(_squares(all_, side)):
        add(rows, kidx, False, q_view=q_view, k_view=k_view)
        todo[rows[:, :, None], kidx[:, None, :]] = False
    diagonal = _diagonal_squares(mask, any_, all_, todo | partial, nq, nk, bq, bk, heads, side)
    for rows, kidx, q_view, k_view in _square_steps(diagonal):
        add(rows, kidx, True, q_view=q_view, k_view=k_view, causal=True)
        todo[rows[:, :, None], kidx[:, None, :]] = False
        partial[rows[:, :, None], kidx[:, None, :]] = False
    # 2. the other full tiles, C at a time (ascending): no mask
    nfull = todo.sum(1)
    full_tiles = torch.where(todo, pos, nkb + pos).sort(1).values
    for c in range(int(nfull.max()) // C if nqb else 0):
        rows = (nfull >= (c + 1) * C).nonzero()[:, 0]
        kidx = full_tiles[rows, c * C:(c + 1) * C]
        add_rows(rows, kidx, False, torch.ones_like(kidx, dtype=torch.bool))
    # 3. the rest (partial tiles and full ones left over), ascending, with a mask
    done = torch.zeros(nqb, nkb + 1, dtype=torch.bool)
    ndone = (nfull // C) * C
    done.scatter_(1, torch.where(torch.arange(nkb) < ndone[:, None], full_tiles, nkb), True)
    rest = partial | (todo & ~done[:, :nkb])
    left = rest.sum(1)
    rest_tiles = torch.where(rest, pos, nkb + pos).sort(1).values
    Cm = max(1, min(C, int(left.max()) if nqb else 1))      # no wider than the widest row needs
    for c in range(-(-int(left.max()) // Cm) if nqb else 0):
        rows = (left > c * Cm).nonzero()[:, 0]
        slots = c * Cm + torch.arange(Cm)
        valid = slots < left[rows, None]
        kidx = torch.where(valid, rest_tiles[rows].gather(1, slots.clamp(max=nkb - 1).expand(len(rows), -1)), 0)
        add_rows(rows, kidx, True, valid)
    # virtual tiles of windows become zero padding around the keys
    lo = min([int(s.kidx.min()) for s in steps] + [0])
    hi = max([int(s.kidx.max()) for s in steps] + [nkb - 1])
    front = -lo
    for s in steps:
        s.rows, s.kidx = s.rows.to(device), (s.kidx + front).to(device)
        s.valid = None if s.valid is None else s.valid.to(device)
        s.k_view = None if s.k_view is None else (s.k_view[0] + front, s.k_view[1])
    plan = Plan(nq, nk, bq, bk, steps, mask, heads, tuple(batch_shape), front, hi - (nkb - 1))
    if key is not None:
        budget = MASK_CACHE_BYTES
        for s in plan.steps:
            if s.masked and not s.causal:
                keep, dead = step_keep(plan, s)
                budget -= keep.numel() * 5       # the boolean and one float32 additive copy
                if budget < 0:
                    break
                s.keep, s.dead = keep, dead
        _PLANS[key] = plan
        while len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


def positions(plan: Plan, s: Step) -> tuple[Tensor, Tensor]:
    """Query positions [G, L, 1] and key positions [G, 1, S] of a step (unclamped; keys of
    padding tiles fall outside 0..nk−1)."""
    dev = s.kidx.device
    i = (s.rows[..., None] * plan.bq + torch.arange(plan.bq, device=dev)).flatten(-2)
    j = ((s.kidx[..., None] - plan.front) * plan.bk + torch.arange(plan.bk, device=dev)).flatten(-2)
    return i[:, :, None], j[:, None, :]


def step_keep(plan: Plan, s: Step) -> tuple[Tensor, Tensor]:
    """The predicate on a masked step's tiles [Lb, Lh, G, L, S] and its dead rows."""
    if s.keep is not None:
        return s.keep, s.dead
    i, j = positions(plan, s)
    keep = plan.mask.keep(i.clamp(max=plan.nq - 1), j.clamp(0, plan.nk - 1), plan.nq, plan.nk, plan.heads)
    ok = (j >= 0) & (j < plan.nk)
    if s.valid is not None:
        ok = ok & s.valid.repeat_interleave(plan.bk, -1)[:, None, :]
    keep = keep & ok
    lead = keep.dim() - 3
    keep = keep.expand(*keep.shape[:lead], *torch.broadcast_shapes(i.shape, j.shape))
    keep = to_bh(keep, lead, plan.batch_shape)
    return keep, ~keep.any(-1)


# ---- content-based masks: sort by bucket ----------------------------------------------


@dataclass(frozen=True, eq=False)
class SortedBuckets(M.Mask):
    """A bucket mask seen in sorted order: position p holds original position perm[p];
    ``rest`` (a structured mask) is evaluated at the original positions."""

    ids: Tensor       # sorted ids [Lb, Lh, N]
    perm: Tensor      # [Lb, Lh, N]
    rest: M.Mask | None
    static = False

    def lead(self, heads=None):
        return tuple(self.ids.shape[:-1])

    def keep(self, i, j, nq, nk, heads=None):
        k = self.ids[..., i] == self.ids[..., j]
        if self.rest is not None:
            k = k & self.rest.keep(self.perm[..., i], self.perm[..., j], nq, nk, heads)
        return k

    def tiles(self, nq, nk, bq, bk, heads=None, device=None):
        g = M.Buckets(self.ids).tiles(nq, nk, bq, bk, heads, device)
        if self.rest is None and bq == bk:     # sorted, same grid: the id ranges are exact
            return M.TileGrid.exact(g.any, g.all)
        return M.TileGrid(g.any, torch.zeros((), dtype=torch.bool), g.any)


def bucket_split(mask: M.Mask) -> tuple[M.Buckets, M.Mask | None] | None:
    """(buckets, the structured rest) when ``mask`` is buckets & structured masks."""
    terms = M.conjuncts(mask)
    buckets = [t for t in terms if isinstance(t, M.Buckets)]
    rest = [t for t in terms if not isinstance(t, M.Buckets)]
    if len(buckets) != 1 or any(not t.static or t.lead(1) for t in rest):
        return None
    out = None
    for t in rest:
        out = t if out is None else M.And(out, t)
    return buckets[0], out
