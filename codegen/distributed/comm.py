"""Collectives with their gradients, on the operations gloo implements
(all_gather_into_tensor, all_to_all_single, batch_isend_irecv).

- :func:`all_gather`: [*s] on every rank → [P, *s]; backward: every rank's gradient for
  my piece, summed (a reduce-scatter written as one all_to_all_single).
- :func:`to_features` / :func:`to_sequence`: the sequence ↔ feature all-to-all (Ulysses'
  sequence ↔ heads, the long convolution's sequence ↔ channels); each is the other's
  backward. Uneven splits of both axes are allowed.
- :func:`ring_shift`: one step of a ring, a flat buffer to the next rank and one from the
  previous (no autograd: ring attention's backward is its own ring).
- :func:`gather_sequence`: the whole sequence on every rank, in global order.
- :func:`all_reduce`: a sum over the ranks, in place (rows read whole, rows.py).
- :func:`broadcast`: the first rank's tensor on every rank, in place (a random draw shared
  by the group: features.py's redrawn frequencies).

Every collective here reports the bytes it hands over to :func:`counting` (a test hook: the
analysis' formulas are checked against it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from codegen.distributed.context import SequenceParallel
from codegen.distributed.layout import Layout, _split

_counters: list[dict[str, int]] = []


@contextlib.contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Within the block, the bytes this rank hands to each kind of collective, by kind:
    'all_reduce' (the buffer reduced), 'all_gather' (this rank's piece), 'all_to_all' (the
    pieces for the other ranks), 'ring' (the block sent to the next rank), 'broadcast' (the
    tensor, counted on every rank)."""
    c: dict[str, int] = {}
    _counters.append(c)
    try:
        yield c
    finally:
        _counters.remove(c)


def _count(kind: str, x: Tensor, numel: int | None = None) -> None:
    for c in _counters:
        c[kind] = c.get(kind, 0) + (x.numel() if numel is None else numel) * x.element_size()


def all_reduce(x: Tensor, sp: SequenceParallel) -> None:
    """``x`` ← the sum of every rank's ``x``, in place."""
    _count("all_reduce", x)
    dist.all_reduce(x, group=sp.group)


def broadcast(x: Tensor, sp: SequenceParallel) -> None:
    """``x`` ← the first rank of the group's ``x``, in place (no autograd: a random draw that
    every rank of the group must share)."""
    _count("broadcast", x)
    dist.broadcast(x, src=sp.global_rank(0), group=sp.group)


def all_gather_into(out: Tensor, x: Tensor, group) -> None:
    """``out`` [P, *x.shape] (contiguous) ← every rank's ``x`` (all_gather_single where this
    torch has it, on flat views: it concatenates along dim 0 where the older call stacked)."""
    _count("all_gather", x)
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out.view(-1), x.contiguous().view(-1), group=group)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sp: SequenceParallel) -> Tensor:
        ctx.sp = sp
        x = x.contiguous()
        out = x.new_empty(sp.size, *x.shape)
        all_gather_into(out, x, sp.group)          # send |x|, receive P·|x|
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous()
        mine = torch.empty_like(g)
        dist.all_to_all_single(mine, g, group=ctx.sp.group)          # piece s → rank s
        return mine.sum(0), None


def all_gather(x: Tensor, sp: SequenceParallel) -> Tensor:
    """Every rank's ``x`` stacked in rank order, [P, *x.shape] (complex tensors as pairs of reals)."""
    if x.is_complex():
        return torch.view_as_complex(_AllGather.apply(torch.view_as_real(x), sp))
    return _AllGather.apply(x, sp)


class _Tie(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, *xs: Tensor) -> Tensor:
        ctx.likes = [(x.shape, x.dtype, x.device) for x in xs]
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):
        return (g, *(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.likes))


def tie(y: Tensor, *xs: Tensor) -> Tensor:
    """``y``, with a backward that also reaches ``xs`` (zero gradients). A rank whose output does
    not depend on a gathered tensor (the first rank never reads the states before it) must
    still run that gather's backward, a collective the other ranks wait in."""
    xs = tuple(x for x in xs if x.requires_grad)
    return _Tie.apply(y, *xs) if xs and torch.is_grad_enabled() else y


def _a2a(pieces: list[Tensor], recv_numel: list[int], sp: SequenceParallel, like: Tensor) -> list[Tensor]:
    """Flat piece s to rank s; the flat pieces received from every rank."""
    send = like.new_empty(sum(p.numel() for p in pieces))
    off = 0
    for p in pieces:                         # straight into the send buffer: no second copy of the pieces
        send[off:off + p.numel()].view(p.shape).copy_(p)
        off += p.numel()
    recv = like.new_empty(sum(recv_numel))
    _count("all_to_all", send, send.numel() - pieces[sp.rank].numel())
    dist.all_to_all_single(recv, send, output_split_sizes=recv_numel,
                           input_split_sizes=[p.numel() for p in pieces], group=sp.group)
    return list(torch.split(recv, recv_numel))


def _shape_with(x_shape, dim: int, size: int, fdim: int, fsize: int) -> list[int]:
    s = list(x_shape)
    s[dim], s[fdim] = size, fsize
    return s


def _to_features(x: Tensor, sp: SequenceParallel, layout: Layout, sdim: int, fdim: int) -> Tensor:
    P, r = sp.size, sp.rank
    feats = _split(x.shape[fdim], P)
    pieces = [x.narrow(fdim, a, b - a) for a, b in feats]
    fa, fb = feats[r]
    shapes = [_shape_with(x.shape, sdim, layout.size(s), fdim, fb - fa) for s in range(P)]
    recv = _a2a(pieces, [int(torch.Size(s).numel()) for s in shapes], sp, x)
    y = torch.cat([t.view(s) for t, s in zip(recv, shapes)], dim=sdim)   # rank order
    if layout.kind == "contiguous":                                         # rank order is global order
        return y
    return y.index_select(sdim, layout.natural(x.device))                  # global order


def _to_sequence(y: Tensor, sp: SequenceParallel, layout: Layout, sdim: int, fdim: int, features: int) -> Tensor:
    P, r = sp.size, sp.rank
    feats = _split(features, P)
    if layout.kind == "contiguous":     # each rank's rows are one range: views, no copy
        pieces = [y.narrow(sdim, a, b - a) for (a, b), in (layout.segments(s) for s in range(P))]
    else:
        pieces = [y.index_select(sdim, layout.positions(s, y.device)) for s in range(P)]
    shapes = [_shape_with(y.shape, sdim, layout.size(r), fdim, b - a) for a, b in feats]
    recv = _a2a(pieces, [int(torch.Size(s).numel()) for s in shapes], sp, y)
    return torch.cat([t.view(s) for t, s in zip(recv, shapes)], dim=fdim)


class _ToFeatures(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp, layout, sdim, fdim):
        ctx.args, ctx.features = (sp, layout, sdim, fdim), x.shape[fdim]
        return _to_features(x, sp, layout, sdim, fdim)

    @staticmethod
    def backward(ctx, g):
        return _to_sequence(g.contiguous(), *ctx.args, ctx.features), None, None, None, None


class _ToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, sp, layout, sdim, fdim, features):
        ctx.args = (sp, layout, sdim, fdim)
        return _to_sequence(y, sp, layout, sdim, fdim, features)

    @staticmethod
    def backward(ctx, g):
        return _to_features(g.contiguous(), *ctx.args), None, None, None, None, None


def to_features(x: Tensor, sp: SequenceParallel, layout: Layout, sdim: int, fdim: int) -> Tensor:
    """Local rows of every feature → every row (global order) of this rank's features.
    ``x`` [..., n_r (sdim), ..., F (fdim), ...] → [..., N, ..., F_r, ...] with F split
    near-evenly over the ranks. Sends (P−1)/P of x."""
    sdim, fdim = sdim % x.dim(), fdim % x.dim()
    return _ToFeatures.apply(x, sp, layout, sdim, fdim)


def to_sequence(y: Tensor, sp: SequenceParallel, layout: Layout, sdim: int, fdim: int, features: int) -> Tensor:
    """The inverse of :func:`to_features` (``features``: the whole F)."""
    sdim, fdim = sdim % y.dim(), fdim % y.dim()
    return _ToSequence.apply(y, sp, layout, sdim, fdim, features)


def ring_shift(send: Tensor, recv_numel: int, sp: SequenceParallel) -> Tensor:
    """Send the flat ``send`` to rank r+1, receive ``recv_numel`` elements from rank r−1."""
    P, r = sp.size, sp.rank
    recv = send.new_empty(recv_numel)
    _count("ring", send)
    ops = [dist.P2POp(dist.isend, send.contiguous(), sp.global_rank((r + 1) % P), sp.group),
           dist.P2POp(dist.irecv, recv, sp.global_rank((r - 1) % P), sp.group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return recv


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp, layout, dim):
        ctx.args = (sp, layout, dim)
        xm = x.movedim(dim, 0).contiguous()
        width = max(layout.sizes)
        pad = xm.new_zeros(width, *xm.shape[1:])
        pad[: xm.shape[0]] = xm
        out = pad.new_empty(sp.size, *pad.shape)
        all_gather_into(out, pad, sp.group)
        rows = torch.cat([out[s, : layout.size(s)] for s in range(sp.size)])
        return rows.index_select(0, layout.natural(x.device)).movedim(0, dim)

    @staticmethod
    def backward(ctx, g):
        sp, layout, dim = ctx.args
        return g.index_select(dim, layout.positions(sp.rank, g.device)), None, None, None


def gather_sequence(x: Tensor, sp: SequenceParallel, layout: Layout, dim: int) -> Tensor:
    """The whole sequence (global order) on every rank; the gradient of a rank's rows is the
    gradient of its own copy at those rows."""
    return _GatherSequence.apply(x, sp, layout, dim % x.dim())
