"""Rows of the split sequence read whole: global tokens, a [CLS] read, a concat back.

A tensor along N is *sharded* (each rank its rows, the layout's) or *replicated* (the same
on every rank: a short prefix or suffix of the sequence, a [CLS] row, what is computed
from them). The gradient of a replicated tensor is held as *partial sums*: the true
gradient is the sum of the ranks' gradients, as for a weight (``reduce_gradients``), so
that position-wise layers on replicated tensors need nothing. The plan
(``codegen/distributed/plan.py``) decides which; the generated module calls:

- :func:`seq_take`: the global rows [lo, hi) of a sharded tensor on every rank: each rank
  writes the rows it owns into a zero buffer, one all-reduce (sum); backward: an all-reduce
  of the ranks' partial gradients, each owner keeps its rows (a reduce to the owner).
- :func:`seq_part`: the rows of [lo, hi) (a range whose length depends on N) that this rank
  holds; stays sharded.
- :func:`seq_concat`: a concat along N of replicated pieces and sharded parts that together
  cover [0, N): each rank keeps its rows, the replicated pieces' rows on the rank(s) owning
  those positions (any layout); no communication.
- :func:`seq_replicated_queries`: a mixer whose queries are replicated and whose keys and
  values are sharded: each rank attends its keys, the partial (output, log-sum-exp) pairs
  are all-gathered and merged by their log-sum-exp in fp32 (an LSE all-reduce);
  backward: the all-gather's reduce-scatter.
- :func:`seq_local`: a mixer on replicated tensors only: the one-process runtime.
- :func:`seq_output`: a replicated output of the entry: every rank computes the same loss
  on it, so its backward carries 1/P on each rank (the ranks' sum is one loss's gradient).

Outside a ``sequence_parallel`` block each is the plain one-process operation.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from codegen.distributed import comm
from codegen.distributed.context import SequenceParallel, active, suspended


def _span(lo: int, hi: int | None, n: int) -> tuple[int, int]:
    """Python's slice semantics on a length ``n`` (``hi`` None: the one index ``lo``)."""
    if hi is None:
        lo = lo % n if lo < 0 else lo
        return lo, lo + 1
    start, stop, _ = slice(lo, hi).indices(n)
    return start, max(start, stop)


def _layout(sp: SequenceParallel, n_local: int | None = None):
    from codegen.distributed.hooks import current_layout

    if n_local is not None:
        return current_layout(n_local)
    lay = sp.state.get("layout")
    if lay is None:
        raise RuntimeError("sequence parallelism: no layout bound (the entry's bind_sizes was not run)")
    return lay


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sp: SequenceParallel, pos: Tensor, axis: int, lo: int, hi: int) -> Tensor:
        sel = ((pos >= lo) & (pos < hi)).nonzero().squeeze(1)
        shape = list(x.shape)
        shape[axis] = hi - lo
        buf = x.new_zeros(shape)
        buf.index_copy_(axis, pos[sel] - lo, x.index_select(axis, sel))
        comm.all_reduce(buf, sp)             # owners' rows, zeros elsewhere: exact
        ctx.args = (sp, axis, lo, sel, pos[sel] - lo, tuple(x.shape))
        return buf

    @staticmethod
    def backward(ctx, g: Tensor):
        sp, axis, lo, sel, at, shape = ctx.args
        g = g.contiguous().clone()
        comm.all_reduce(g, sp)               # the partial gradients of every rank
        dx = g.new_zeros(shape)
        dx.index_copy_(axis, sel, g.index_select(axis, at))
        return dx, None, None, None, None, None


def _global_rows(x: Tensor, axis: int, lo: int, hi: int | None):
    """(sp, layout, a, b): the active group, its layout of ``x``'s sequence axis and the
    global span [a, b) of rows [lo, hi); outside sequence parallelism (None, None, a, b)
    over ``x``'s own rows."""
    sp = active()
    if sp is None:
        return (None, None, *_span(lo, hi, x.shape[axis]))
    lay = _layout(sp, x.shape[axis])
    return (sp, lay, *_span(lo, hi, lay.n))


def seq_take(x: Tensor, axis: int, lo: int, hi: int | None) -> Tensor:
    """Rows [lo, hi) (``hi`` None: the row ``lo``) of the sequence axis ``axis`` of ``x``,
    replicated on every rank."""
    axis = axis % x.dim()
    sp, lay, a, b = _global_rows(x, axis, lo, hi)
    if sp is None:
        return x.narrow(axis, a, b - a)
    return _Rows.apply(x, sp, lay.positions(sp.rank, x.device), axis, a, b)


def seq_part(x: Tensor, axis: int, lo: int, hi: int) -> Tensor:
    """The rows of global positions [lo, hi) that this rank holds (the whole range outside
    a block)."""
    axis = axis % x.dim()
    sp, lay, a, b = _global_rows(x, axis, lo, hi)
    if sp is None:
        return x.narrow(axis, a, b - a)
    pos = lay.positions(sp.rank, x.device)
    return x.index_select(axis, ((pos >= a) & (pos < b)).nonzero().squeeze(1))


def seq_concat(pieces: list[Tensor], axis: int, spec: tuple) -> Tensor:
    """``torch.cat(pieces, axis)`` along N. ``spec``: per piece ('replicated', its first output
    row, None) or ('part', lo, hi), the global positions a sharded part holds (its output rows)."""
    sp = active()
    if sp is None:
        return torch.cat(pieces, dim=axis)
    axis = axis % pieces[0].dim()
    lay = _layout(sp)
    pos = lay.positions(sp.rank, pieces[0].device)
    parts, where = [], []
    for piece, (kind, lo, hi) in zip(pieces, spec):
        if kind == "replicated":
            a, b = lo, lo + piece.shape[axis]
        else:
            a, b = _span(lo, hi, lay.n)
        idx = ((pos >= a) & (pos < b)).nonzero().squeeze(1)
        if kind == "replicated":
            parts.append(piece.index_select(axis, pos[idx] - a))     # the rows this rank owns
        else:
            if piece.shape[axis] != idx.numel():
                raise ValueError(f"sequence parallelism: a part of {piece.shape[axis]} rows where this rank "
                                 f"holds {idx.numel()} of [{a}, {b})")
            parts.append(piece)
        where.append(idx)
    at = torch.cat(where)
    if at.numel() != pos.numel():
        raise ValueError(f"sequence parallelism: the concat covers {at.numel()} of this rank's {pos.numel()} rows")
    return torch.cat(parts, dim=axis).index_select(axis, torch.argsort(at))


@contextlib.contextmanager
def _flag(sp: SequenceParallel, key: str):
    sp.state[key] = True
    try:
        yield
    finally:
        sp.state.pop(key, None)


def seq_replicated_queries(call):
    """Run ``call()`` (one mixer call) with its queries replicated, keys and values sharded."""
    sp = active()
    if sp is None:
        return call()
    with _flag(sp, "replicated_queries"):
        return call()


def seq_local(call):
    """Run ``call()`` (a mixer on replicated tensors) on one process, identically on each rank."""
    with suspended():
        return call()


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, k: float) -> Tensor:
        ctx.k = k
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.k, None


def seq_output(y: Tensor) -> Tensor:
    """A replicated output of the entry; its gradient counts 1/P on each rank."""
    sp = active()
    if sp is None or not torch.is_grad_enabled() or not y.requires_grad:
        return y
    return _Scale.apply(y, 1.0 / sp.size)


def replicated_queries_attention(q: Tensor, k: Tensor, v: Tensor, mask, *, scale: float, sp: SequenceParallel,
                                 bias=None, cap: float | None = None) -> Tensor:
    """Softmax attention of replicated queries q [.., G, Dk] (the one-process convention:
    query positions 0..G−1) to this rank's keys and values (sharded); the ranks' partial
    results merged by their log-sum-exp in fp32. Scores per rank: G × n."""
    from codegen import masks as M
    from codegen.softmax import torch_impl as local
    from codegen.softmax.scores import normalize_bias, positional_bias

    mask = M.Full() if mask is None else M.simplify(mask)
    if not mask.static:
        raise ValueError(f"sequence-parallel softmax: the mask {mask} depends on data; it has no distributed form")
    bias = normalize_bias(bias)
    if bias is not None and bias[1] is not None and bias[1].requires_grad:
        raise ValueError("sequence-parallel softmax: a trainable positional bias table has no distributed gradient")
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    heads = batch[-1] if batch else 1
    lay = _layout(sp, k.shape[-2])
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    qc, kc, vc = (local._canon(x, batch).to(dtype) for x in (q, k, v))
    nq = q.shape[-2]
    i = torch.arange(nq, device=q.device)[:, None]
    j = lay.positions(sp.rank, q.device)[None, :]
    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale                  # [B, H, G, n]
    if bias is not None:
        s = s + positional_bias(bias[0], bias[1], i, j, heads, s.dtype)
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    s = s.masked_fill(~mask.keep(i, j, nq, lay.n, heads), float("-inf"))
    m = s.amax(-1).detach()
    m = torch.where(torch.isinf(m), 0.0, m)
    e = torch.exp(s - m[..., None])
    rowsum = e.sum(-1)
    empty = rowsum == 0
    safe = torch.where(empty, 1.0, rowsum)
    o = torch.matmul(e, vc) / safe[..., None]
    lse = torch.where(empty, float("-inf"), m + torch.log(safe))
    both = comm.all_gather(torch.cat([o, lse[..., None]], dim=-1), sp)  # [P, B, H, G, Dv + 1]
    o_all, lse_all = both[..., :-1], both[..., -1]
    top = lse_all.amax(0).detach()
    top = torch.where(torch.isinf(top), 0.0, top)
    w = torch.exp(lse_all - top)                                        # a rank with no kept key: 0
    den = w.sum(0)
    out = (w[..., None] * o_all).sum(0) / torch.where(den == 0, 1.0, den)[..., None]
    return out.to(v.dtype).reshape(*batch, nq, v.shape[-1])
