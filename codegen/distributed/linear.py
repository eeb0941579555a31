"""Linear, decayed and gated attention, selective scan and retention, sequence-parallel
(LASP-2's state passing, Sun et al. 2025).

The recurrence S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t is linear in the state, so a segment of
positions [a, b) acts on the state entering it as S_b = T ⊙ S_a + Ŝ, with

    Ŝ = Σ_{t∈[a,b)} (e^{Σ_{u>t} lg_u} ⊙ φ(k_t))ᵀ v_t     (the segment's state from zero)
    T = e^{Σ_{t∈[a,b)} lg_t}                              (its transition: per head, or per key feature)

Each rank forms (Ŝ, T) for its segments (one matrix product), the summaries of all ranks
are all-gathered (P·F·V numbers each: traffic independent of N), every rank runs the
prefix merge S_in(g+1) = T_g ⊙ S_in(g) + Ŝ_g over the segments in global order in fp32 (or
wider), and each rank runs the one-process runtime on its segments from their incoming
states. The backward is autograd through the same steps: the all-gather's backward is a
reduce-scatter (``comm.all_gather``), so each rank's summary receives the gradients the
later ranks' outputs send it. Non-causal (no decay): S_in is the sum of the other ranks' Ŝ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from codegen.distributed import comm
from codegen.distributed.context import SequenceParallel, suspended
from codegen.linear import torch_impl as lin
from codegen.linear.chunked import OuterGate
from codegen.linear.features import feature_map, feature_width


def _slice_decay(decay, rank: int, a: int, b: int):
    """The part of a decay argument that covers local rows [a, b) (see the runtime's conventions)."""
    if decay is None or not isinstance(decay, (Tensor, OuterGate)):
        return decay
    if isinstance(decay, OuterGate):
        return OuterGate(decay.rate[..., a:b], decay.channel)
    if decay.dim() <= rank - 2:
        return decay
    return decay[..., a:b] if decay.dim() == rank - 1 else decay[..., a:b, :]


def _suffix(x: Tensor, dim: int) -> Tensor:
    """Σ_{u>t} x_u along ``dim``, each entry summed from its own terms."""
    rev = torch.flip(torch.cumsum(torch.flip(x, (dim,)), dim), (dim,))
    pad = [0, 0] * (-dim - 1) + [0, 1]
    return F.pad(rev.narrow(dim, 1, x.shape[dim] - 1), pad)


def _summary(fk: Tensor, v: Tensor, kind, lg) -> tuple[Tensor, Tensor]:
    """(Ŝ [..., F, V], log T broadcastable to it) of one segment; fk [..., L, F], v [..., L, V]."""
    L = fk.shape[-2]
    if kind is None:
        return fk.transpose(-1, -2) @ v, fk.new_zeros(1, 1)
    if kind == "head":
        lgh = lg[..., None]                                               # [..., 1]
        w = lgh * torch.arange(L - 1, -1, -1, dtype=fk.dtype, device=fk.device)
        return (fk * torch.exp(w)[..., None]).transpose(-1, -2) @ v, (lgh * L)[..., None]
    if kind == "token":
        w = _suffix(lg, -1)
        return (fk * torch.exp(w)[..., None]).transpose(-1, -2) @ v, lg.sum(-1)[..., None, None]
    w = _suffix(lg, -2)                                                   # [..., L, F]
    return (fk * torch.exp(w)).transpose(-1, -2) @ v, lg.sum(-2)[..., None]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, sp: SequenceParallel, feature: str = "identity",
                     projection: Tensor | None = None, norm: str = "none", causal: bool = True,
                     decay=None, log_decay: bool = False, scale: float = 1.0, algorithm: str = "chunked",
                     chunk: int = 64) -> Tensor:
    """The distributed form of :func:`codegen.linear.torch_impl.linear_attention`: q, k, v hold
    this rank's rows (sequence axis −2) of one sequence laid out by ``sp``."""
    kw = dict(feature=feature, projection=projection, norm=norm, causal=causal, log_decay=log_decay,
              scale=scale, algorithm=algorithm, chunk=chunk)
    layout = sp.layout_of(q.shape[-2])
    if k.shape[-2] != q.shape[-2] or v.shape[-2] != q.shape[-2]:
        raise ValueError("sequence-parallel linear attention needs q, k, v of one sequence (equal local lengths)")
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    normalized = norm == "sum"
    fk = feature_map(k.to(dtype), feature, projection, is_query=False, normalized=normalized)
    vv = v.to(dtype)
    if normalized:
        vv = torch.cat([vv, vv.new_ones(()).expand(*vv.shape[:-1], 1)], dim=-1)
    f = feature_width(feature, q.shape[-1], projection)
    # one segment's rows at a time
    segs, off = [], 0
    for a, b in layout.segments(sp.rank):
        segs.append((off, off + b - a))
        off += b - a
    if not causal:
        if decay is not None:
            raise ValueError("a decay needs causal=True")
        s_loc = fk.transpose(-1, -2) @ vv
        every = comm.all_gather(s_loc, sp)                                 # [P, ..., F, V]
        others = torch.cat([every[: sp.rank], every[sp.rank + 1:]]).sum(0)
        with suspended():
            return comm.tie(lin.linear_attention(q, k, v, decay=None, initial_state=others, **kw), every)
    kind, lg = lin._log_decay(decay, log_decay, q.dim(), q.shape[-2], f, dtype, q.device)
    if isinstance(lg, OuterGate):
        lg = lg.materialize()
    sums, trans = [], []
    for a, b in segs:
        lgs = lg if kind in (None, "head") else (lg[..., a:b] if kind == "token" else lg[..., a:b, :])
        s, t = _summary(fk[..., a:b, :], vv[..., a:b, :], kind, lgs)
        sums.append(s)
        trans.append(t)
    batch = torch.broadcast_shapes(*(s.shape[:-2] for s in sums), *(t.shape[:-2] for t in trans))
    state = (*batch, f, vv.shape[-1])
    tshape = (*batch, trans[0].shape[-2], 1)
    mine = torch.cat([torch.stack([s.expand(state) for s in sums]).flatten(1),    # one gather for both
                      torch.stack([t.expand(tshape) for t in trans]).flatten(1)], dim=1)
    every = comm.all_gather(mine, sp)                                        # [P, segments, |S| + |T|]
    cut = every.shape[-1] - math.prod(tshape)
    all_s = every[..., :cut].reshape(*every.shape[:2], *state)
    all_t = every[..., cut:].reshape(*every.shape[:2], *tshape)
    # the prefix merge over the segments in global order (every rank does it, P·segments steps)
    incoming, h = {}, torch.zeros(state, dtype=dtype, device=q.device)
    for _a, _b, r, i in layout.order():
        incoming[(r, i)] = h
        h = torch.exp(all_t[r, i]) * h + all_s[r, i]
    outs = []
    with suspended():
        for i, (a, b) in enumerate(segs):
            one = len(segs) == 1
            qs, ks, vs = (x if one else x[..., a:b, :] for x in (q, k, v))
            d = decay if one else _slice_decay(decay, q.dim(), a, b)
            outs.append(lin.linear_attention(qs, ks, vs, decay=d, initial_state=incoming[(sp.rank, i)], **kw))
    return comm.tie(outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2), every)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   delta_softplus: bool = False, *, sp: SequenceParallel, algorithm: str = "chunked",
                   chunk: int = 32) -> Tensor:
    """The distributed form of :func:`codegen.linear.torch_impl.selective_scan` (Mamba's layout:
    u, delta [B, Dm, n]; B, C [B, S, n] hold this rank's positions, the last axis)."""
    dt = F.softplus(delta) if delta_softplus else delta
    q = C.transpose(-1, -2).unsqueeze(-3)
    k = B.transpose(-1, -2).unsqueeze(-3)
    v = (dt * u).unsqueeze(-1)
    y = linear_attention(q, k, v, sp=sp, decay=OuterGate(dt, A), log_decay=True, algorithm=algorithm,
                         chunk=chunk).squeeze(-1)
    return y if D is None else y + u * D.unsqueeze(-1)
