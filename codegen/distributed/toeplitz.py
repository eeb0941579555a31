"""Toeplitz (convolution) mixers and short convolutions, sequence-parallel.

- **SSM kernels** (diagonal, S4D/DSS/S5, dense, shift): state passing. An SSM's state after
  a segment is Ā^L h_in + ĥ (``state.input_state`` ĥ: the segment's state from zero). Each
  rank forms ĥ for its segments, the ĥ of all ranks are all-gathered (P·C·state numbers,
  independent of N), every rank runs the prefix merge h_in(g+1) = Ā^{L_g} h_in(g) + ĥ_g in
  global order, and the one-process runtime runs each segment from its incoming state
  (a shift SSM's state is the last S − 1 inputs: this is its halo exchange).
- **Explicit kernels** (long convolutions, Hyena's filters): a sequence ↔ channel
  all-to-all gives each rank every position of C/P channels, the local FFT convolution runs
  on them, a second all-to-all brings the outputs back. Sends 2·(P−1)/P of the rank's rows.
- **Short convolutions** (``conv1d``): a halo exchange — every rank all-gathers the first
  and last width − 1 rows of each of its segments (independent of N), and each segment is
  convolved with its neighbours' rows in front (and behind, non-causal).

Bidirectional SSMs run the state passing twice: forward, and over the reversed order with
the reverse system.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from codegen.distributed import comm
from codegen.distributed.context import SequenceParallel, suspended
from codegen.toeplitz import state as st
from codegen.toeplitz import torch_impl as tz
from codegen.toeplitz.kernels import discretize


def _local_segments(layout, rank: int) -> list[tuple[int, int, int]]:
    """(global start, local start, local stop) of each of ``rank``'s segments."""
    out, off = [], 0
    for a, b in layout.segments(rank):
        out.append((a, off, off + b - a))
        off += b - a
    return out


def _merge(sys, every: Tensor, layout, rank: int, reverse: bool) -> list[Tensor]:
    """The state entering each of ``rank``'s segments from the gathered segment states
    ``every`` [P, segments, ...] (``reverse``: running from the end of the sequence)."""
    order = layout.order()
    if reverse:
        order = order[::-1]
    seen, h, prev = {}, None, None
    for a, b, r, i in order:
        if prev is None:
            h = torch.zeros_like(every[r, i])
        else:
            pr, pi, plen = prev
            h = st.advance(sys, h, plen) + every[pr, pi]
        seen[(r, i)] = h
        prev = (r, i, b - a)
    return [seen[(rank, i)] for i in range(len(layout.segments(rank)))]


def toeplitz_mix(v: Tensor, *, sp: SequenceParallel, kind: str | None = None, params: dict | None = None,
                 reverse_params: dict | None = None, explicit_kernel: Tensor | None = None, causal: bool = True,
                 disc: str | None = None, conj: bool = True, mimo: bool = False, algorithm: str = "fft",
                 chunk: int = 4096, scan_block: int = 64, kernel_length: int | None = None) -> Tensor:
    """The distributed form of :func:`codegen.toeplitz.torch_impl.toeplitz_mix`: v [..., n, C]
    holds this rank's rows of one sequence laid out by ``sp``. ``kernel_length``: DSS's
    normalisation length, the *global* N by default."""
    layout = sp.layout_of(v.shape[-2])
    kw = dict(causal=causal, algorithm=algorithm, chunk=chunk, scan_block=scan_block)
    if explicit_kernel is not None:
        C = v.shape[-1]
        vc = comm.to_features(v, sp, layout, -2, -1)                      # [..., N, C_r]
        a, b = comm._split(C, sp.size)[sp.rank]
        with suspended():
            yc = tz.toeplitz_mix(vc, explicit_kernel=explicit_kernel[:, a:b], **kw)
        return comm.to_sequence(yc, sp, layout, -2, -1, C)
    if kind is None or params is None:
        raise ValueError("toeplitz_mix needs an SSM (kind and params) or an explicit_kernel")
    if not causal and reverse_params is None:
        raise ValueError("a bidirectional SSM mix (causal=False) needs reverse_params")
    rd = tz._compute_dtype(v, *params.values())
    lead, (n, C) = v.shape[:-2], v.shape[-2:]
    u = v.reshape(-1, n, C).to(rd)
    length = kernel_length or layout.n
    sys = discretize(kind, {k: t.to(rd) for k, t in params.items()}, disc=disc, conj=conj, mimo=mimo, length=length)
    base = dict(kind=kind, disc=disc, conj=conj, mimo=mimo, algorithm=algorithm, chunk=chunk,
                scan_block=scan_block, kernel_length=length)
    segs = _local_segments(layout, sp.rank)
    mine = [st.input_state(sys, u[:, a:b]) for _, a, b in segs]         # each segment's state from zero
    if not causal:
        rsys = discretize(kind, {k: t.to(rd) for k, t in reverse_params.items()}, disc=disc, conj=conj,
                          mimo=mimo, length=length)
        ur = torch.cat([u[:, a:b].flip(1) for _, a, b in segs], dim=1)    # each segment reversed
        mine += [st.input_state(rsys, ur[:, a:b]) for _, a, b in segs]
    every = comm.all_gather(torch.stack(mine), sp)                         # one gather for both directions
    h_in = _merge(sys, every[:, :len(segs)], layout, sp.rank, reverse=False)
    outs = []
    with suspended():
        for (_, a, b), h in zip(segs, h_in):
            outs.append(tz.toeplitz_mix(u[:, a:b], params=params, initial_state=h, causal=True, **base))
    y = torch.cat(outs, dim=1)
    if not causal:
        hr = _merge(rsys, every[:, len(segs):], layout, sp.rank, reverse=True)
        k0 = tz._tap0(rsys)
        back = []
        with suspended():
            for (_, a, b), h in zip(segs, hr):
                seg = ur[:, a:b]
                yr = tz.toeplitz_mix(seg, params=reverse_params, initial_state=h, causal=True, **base)
                yr = yr - (seg * k0 if k0.dim() == 1 else seg @ k0.transpose(0, 1))   # the diagonal once
                back.append(yr.flip(1))
        y = y + torch.cat(back, dim=1)
    y = comm.tie(y, every)
    return y.to(v.dtype).reshape(*lead, n, y.shape[-1])


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, causal: bool = True, *,
           sp: SequenceParallel) -> Tensor:
    """The distributed form of the runtime's depthwise ``conv1d`` (x [..., n, C], weight
    [C, width]) by a halo exchange."""
    layout = sp.layout_of(x.shape[-2])
    lead, n, c = x.shape[:-2], x.shape[-2], x.shape[-1]
    width = weight.shape[-1]
    left, right = (width - 1, 0) if causal else ((width - 1) // 2, width // 2)
    h = max(left, right, 1)
    u = x.reshape(-1, n, c)
    segs = _local_segments(layout, sp.rank)
    edges = []
    for _, a, b in segs:           # first and last h rows of each segment, zero-padded to h
        first, last = u[:, a:min(b, a + h)], u[:, max(a, b - h):b]
        edges.append(torch.cat([F.pad(first, (0, 0, 0, h - first.shape[1])),
                                F.pad(last, (0, 0, h - last.shape[1], 0))], dim=1))
    every = comm.all_gather(torch.stack(edges), sp)                        # [P, segments, B, 2h, C]
    rows: dict[int, Tensor] = {}                                            # global position → its row
    for r in range(sp.size):
        for i, (ga, a, b) in enumerate(_local_segments(layout, r)):
            L = b - a
            for t in range(min(h, L)):
                rows[ga + t] = every[r, i, :, t]
                rows[ga + L - 1 - t] = every[r, i, :, 2 * h - 1 - t]
    zero = u.new_zeros(u.shape[0], c)
    outs = []
    for ga, a, b in segs:
        before = [rows.get(p, zero) if p >= 0 else zero for p in range(ga - left, ga)]
        after = [rows.get(p, zero) if p < layout.n else zero for p in range(ga + b - a, ga + b - a + right)]
        seg = torch.cat([torch.stack(before, 1) if before else u[:, :0], u[:, a:b],
                         torch.stack(after, 1) if after else u[:, :0]], dim=1)
        y = F.conv1d(seg.transpose(1, 2), weight.unsqueeze(1), bias, groups=c)
        outs.append(y.transpose(1, 2))
    return comm.tie(torch.cat(outs, dim=1), every).reshape(*lead, n, c)
