"""Softmax attention with any structural mask, sequence-parallel (SPEC §8).

Two strategies; :func:`choose` is the cost rule.

**Ring** (Liu et al., ring attention): every rank keeps its queries; the K/V blocks of the
ranks travel around the ring, P − 1 hops. At each step a rank attends its queries to the
block it holds, with the mask evaluated at *global* positions (the layout's), and merges
the partial result into a running (row maximum, row sum, weighted values) in fp32 — the
log-sum-exp merge of online softmax. Sub-blocks of query rows whose mask against the
block is empty are skipped (a causal mask empties half of them; with the zig-zag layout
every rank skips the same amount); the scores are computed in tiles of ROWS × KEYS. Memory per
rank: the inputs, the output and its fp32 statistics, and two K/V blocks in flight (the one
held, sent as it is, and the one arriving): O(n·D) with n = N/P, plus one tile's scores.
Backward: the same ring again, the K/V blocks travelling with their dK/dV accumulators,
which one extra hop brings home. Sends per rank: 2(P−1)·n·H·D forward,
(4P − 2)·n·H·D backward.

**Ulysses** (Jacobs et al., DeepSpeed-Ulysses): an all-to-all turns [H, n] shards into
[H/P, N] (all positions of a slice of the heads), the ordinary one-process runtime
attends them, another all-to-all turns the output back. Needs H ≥ P. Run in rounds of
ULYSSES_HEADS heads per rank, so that a rank holds its inputs, its output and one round's
resharded tensors. Sends per rank 4·(P−1)/P·n·H·D forward (q, k, v, o), the same backward.

Cost rule (``choose``): Ulysses when the heads split evenly over the ranks and the mask
has no per-head term (its per-rank traffic is 4(P−1)/P·nHD against the ring's 2(P−1)·nHD,
and its local attention is the tuned single-process path); the ring otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from codegen import masks as M
from codegen.distributed import comm, memory
from codegen.distributed.context import SequenceParallel, suspended
from codegen.distributed.layout import Layout
from codegen.distributed.memory import KEYS, ROWS, ULYSSES_HEADS
from codegen.softmax import torch_impl as local
from codegen.softmax.scores import normalize_bias, positional_bias


def choose(sp: SequenceParallel, heads: int, mask: M.Mask, shapes: tuple | None = None) -> tuple[str, str]:
    """(strategy, why) for ``heads`` heads under ``mask`` on ``sp``. ``shapes``: (elements of
    this rank's q, k, v rows, batch × heads, rows n) for the memory budget ``sp.memory``."""
    P = sp.size
    if sp.softmax != "auto":
        return sp.softmax, "forced by sequence_parallel(softmax=...)"
    if mask.lead(heads):
        return "ring", "the mask has a per-head term (Ulysses would split its heads)"
    if heads % P:
        return "ring", f"{heads} heads do not split evenly over {P} ranks"
    why = f"{heads} heads over {P} ranks: all-to-all sends 4(P−1)/P·nHD, the ring 2(P−1)·nHD"
    if sp.memory is None or shapes is None:
        return "ulysses", why
    qe, ke, ve, bh, n = shapes
    base = (qe + ke + 2 * ve) * 4 + bh * n * 4                # inputs, output and its log-sum-exp (fp32)
    uly = base + memory.ulysses_bytes(qe, ke, ve, heads, P)
    ring = base + memory.ring_bytes(ke, ve, bh, n)
    if uly <= sp.memory or uly <= ring:
        return "ulysses", f"{why}; holds {uly / 2**20:.1f} MiB per rank (the ring {ring / 2**20:.1f})"
    return "ring", (f"Ulysses would hold {uly / 2**20:.1f} MiB per rank, over the budget of "
                    f"{sp.memory / 2**20:.1f} MiB; the ring holds {ring / 2**20:.1f}")


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: M.Mask | None, *, scale: float, sp: SequenceParallel,
                      bias=None, cap: float | None = None, algorithm: str = "tiled", block: int = 64) -> Tensor:
    """The distributed form of :func:`codegen.softmax.torch_impl.softmax_attention`: q, k, v
    hold this rank's rows (sequence axis −2, heads −3) of one sequence laid out by ``sp``."""
    mask = M.Full() if mask is None else M.simplify(mask)
    if not mask.static:
        raise ValueError(f"sequence-parallel softmax: the mask {mask} depends on data (bucket or block ids "
                         "of other ranks' positions); it has no distributed algorithm yet")
    bias = normalize_bias(bias)
    if bias is not None and bias[1] is not None and bias[1].requires_grad:
        raise ValueError("sequence-parallel softmax: a trainable positional bias table has no distributed "
                         "gradient yet")
    if q.shape[-2] != k.shape[-2] or k.shape[-2] != v.shape[-2]:
        raise ValueError("sequence-parallel softmax needs queries and keys of one sequence (equal local "
                         f"lengths), got q {tuple(q.shape)}, k {tuple(k.shape)}")
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    heads = batch[-1] if batch else 1
    layout = sp.layout_of(q.shape[-2])
    shapes = tuple(math.prod((*batch, x.shape[-2], x.shape[-1])) for x in (q, k, v)) + (math.prod(batch), q.shape[-2])
    strategy, _ = choose(sp, heads, mask, shapes)
    if strategy == "ulysses":
        if heads < sp.size:
            raise ValueError(f"Ulysses needs at least as many heads as ranks ({heads} < {sp.size})")
        if mask.lead(heads):
            raise ValueError(f"Ulysses splits the heads over the ranks: the mask {mask} has a per-head term "
                             "(use the ring)")
        qc, kc, vc = (local._canon(x, batch) for x in (q, k, v))
        o = _ulysses(qc, kc, vc, mask, scale, bias, cap, algorithm, block, sp, layout)
        return o.reshape(*batch, q.shape[-2], v.shape[-1])
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    qc, kc, vc = (local._canon(x, batch).to(dtype) for x in (q, k, v))
    cfg = _Config(sp, layout, mask, scale, bias, cap, heads)
    o = _Ring.apply(qc, kc, vc, cfg)
    return o.to(v.dtype).reshape(*batch, q.shape[-2], v.shape[-1])


def _ulysses(qc: Tensor, kc: Tensor, vc: Tensor, mask: M.Mask, scale: float, bias, cap: float | None,
             algorithm: str, block: int, sp: SequenceParallel, layout: Layout) -> Tensor:
    """Ulysses on [B, H, n, D] shards, in rounds of ``ULYSSES_HEADS`` heads per rank: each
    round resharding only its heads, so that what a rank holds besides its inputs and output is
    a (P·ULYSSES_HEADS)/H fraction of them (all heads at once held q, k, v, o resharded and an
    exchange's send and receive copies: 2.5× the inputs). Same bytes sent, H/(P·ULYSSES_HEADS)
    times the all-to-alls. Uneven heads (forced): one round."""
    heads, P = qc.shape[1], sp.size
    step = P * ULYSSES_HEADS if heads % P == 0 else heads
    out = None
    for h0 in range(0, heads, step):
        h1 = min(heads, h0 + step)
        qh, kh, vh = (comm.to_features(x[:, h0:h1], sp, layout, 2, 1) for x in (qc, kc, vc))
        with suspended():
            oh = local.softmax_attention(qh, kh, vh, mask, scale=scale, bias=_head_slice(bias, heads, h0, h1, sp),
                                         cap=cap, algorithm=algorithm, block=block)
        del qh, kh, vh                     # held by autograd when it needs them, freed otherwise
        og = comm.to_sequence(oh, sp, layout, 2, 1, h1 - h0)
        del oh
        if step == heads:
            return og
        if out is None:
            out = og.new_empty(og.shape[0], heads, *og.shape[2:])
        out[:, h0:h1] = og                 # differentiable (a copy into a slice)
    return out


def _head_slice(bias, heads: int, h0: int, h1: int, sp: SequenceParallel):
    """The bias of this rank's heads after the all-to-all of heads [h0, h1) (split as comm
    splits them)."""
    if bias is None:
        return None
    kind, table = bias
    if table is None:       # default ALiBi slopes depend on the total head count
        from codegen.softmax.scores import alibi_slopes
        table = alibi_slopes(heads)
    if table.shape[0] == 1:
        return kind, table
    a, b = comm._split(h1 - h0, sp.size)[sp.rank]
    return kind, table[h0 + a:h0 + b]


@dataclass(frozen=True)
class _Config:
    sp: SequenceParallel
    layout: Layout
    mask: M.Mask
    scale: float
    bias: tuple | None
    cap: float | None
    heads: int

    def scores(self, qs: Tensor, kb: Tensor, pq: Tensor, pk: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(raw scores before the cap, or None without a cap; capped and masked scores) of rows
        pq against keys pk; (None, None) when the mask keeps no pair. One tile of scores is
        allocated (two with a cap): the scale goes into the query rows, the bias and the mask
        are applied in place."""
        n = self.layout.n
        keep = self.mask.keep(pq[:, None], pk[None, :], n, n, self.heads)
        if not bool(keep.any()):
            return None, None
        s = torch.matmul(qs * self.scale, kb.transpose(-1, -2))          # read (rows + keys)·D, write rows·keys
        if self.bias is not None:
            s += positional_bias(self.bias[0], self.bias[1], pq[:, None], pk[None, :], self.heads, s.dtype)
        raw = None
        if self.cap is not None:
            raw, s = s, self.cap * torch.tanh(s / self.cap)
        return raw, s.masked_fill_(~keep, float("-inf"))


def _flat(*xs: Tensor) -> Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


def _unflat(buf: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return [t.view(s) for t, s in zip(torch.split(buf, sizes), shapes)]


def _block_shapes(k: Tensor, v: Tensor, rows: int) -> list[tuple[int, ...]]:
    return [(*k.shape[:2], rows, k.shape[-1]), (*v.shape[:2], rows, v.shape[-1])]


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cfg: _Config) -> Tensor:
        sp, lay = cfg.sp, cfg.layout
        P, r = sp.size, sp.rank
        B, H, n, _ = q.shape
        pq = lay.positions(r, q.device)
        m = q.new_full((B, H, n), float("-inf"))
        rowsum = q.new_zeros(B, H, n)
        acc = q.new_zeros(B, H, n, v.shape[-1])
        # the block held is one flat buffer: it is sent as it is (no copy per hop) while it is
        # computed on, so two blocks are in flight: the one held and the one arriving
        buf = _flat(k, v) if P > 1 else None
        kb, vb = _unflat(buf, _block_shapes(k, v, n)) if P > 1 else (k, v)
        for step in range(P):
            src = (r - step) % P
            pending = None
            if step < P - 1:        # the next block travels while this one is computed
                shapes = _block_shapes(k, v, lay.size((r - step - 1) % P))
                pending = _start(buf, sum(math.prod(s) for s in shapes), sp), shapes
            pk = lay.positions(src, q.device)
            for c in range(0, kb.shape[2], KEYS):       # scores of one tile: ROWS × KEYS, whatever n
                kc, vc, pkc = kb[:, :, c:c + KEYS], vb[:, :, c:c + KEYS], pk[c:c + KEYS]
                for a in range(0, n, ROWS):
                    b = min(n, a + ROWS)
                    s = cfg.scores(q[:, :, a:b], kc, pq[a:b], pkc)[1]
                    if s is None:
                        continue                                          # an empty tile: skipped
                    m_new = torch.maximum(m[:, :, a:b], s.amax(-1))
                    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
                    p = s.sub_(shift[..., None]).exp_()                   # in place: one tile
                    del s
                    alpha = torch.exp(m[:, :, a:b] - shift)
                    rowsum[:, :, a:b] = rowsum[:, :, a:b] * alpha + p.sum(-1)
                    acc[:, :, a:b] = acc[:, :, a:b] * alpha[..., None] + torch.matmul(p, vc)
                    m[:, :, a:b] = m_new
            if pending is not None:
                buf = _finish(pending[0])
                kb, vb = _unflat(buf, pending[1])
        del buf, kb, vb
        empty = rowsum == 0                                               # rows with no kept key give 0
        o = acc.div_(torch.where(empty, 1.0, rowsum)[..., None])         # in place: no second [n, D] copy
        lse = torch.where(empty, float("-inf"), m + torch.log(torch.where(empty, 1.0, rowsum)))
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.cfg = cfg
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        cfg = ctx.cfg
        sp, lay = cfg.sp, cfg.layout
        P, r = sp.size, sp.rank
        n = q.shape[2]
        do = do.contiguous().to(o.dtype)
        delta = (do * o).sum(-1)                                          # D_i = do_i · o_i
        lse_safe = torch.where(torch.isinf(lse), 0.0, lse)
        pq = lay.positions(r, q.device)
        dq = torch.zeros_like(q)
        # K, V and their dK, dV accumulators travel as one flat buffer, sent as it is
        shapes = _block_shapes(k, v, n)
        buf = torch.cat([k.reshape(-1), v.reshape(-1), q.new_zeros(k.numel() + v.numel())])
        kb, vb, dkb, dvb = _unflat(buf, shapes + shapes)
        for step in range(P):
            src = (r - step) % P
            pk = lay.positions(src, q.device)
            for c in range(0, kb.shape[2], KEYS):
                kc, vc, pkc = kb[:, :, c:c + KEYS], vb[:, :, c:c + KEYS], pk[c:c + KEYS]
                for a in range(0, n, ROWS):
                    b = min(n, a + ROWS)
                    raw, s = cfg.scores(q[:, :, a:b], kc, pq[a:b], pkc)
                    if s is None:
                        continue
                    p = s.sub_(lse_safe[:, :, a:b, None]).exp_()          # the forward's probabilities
                    del s
                    dos = do[:, :, a:b]
                    dvb[:, :, c:c + KEYS] += torch.matmul(p.transpose(-1, -2), dos).sum_to_size(vc.shape)
                    ds = torch.matmul(dos, vc.transpose(-1, -2)).sub_(delta[:, :, a:b, None]).mul_(p)
                    del p
                    if cfg.cap is not None:
                        ds = ds * (1 - torch.tanh(raw / cfg.cap) ** 2)
                    ds.mul_(cfg.scale)
                    dq[:, :, a:b] += torch.matmul(ds, kc)
                    dkb[:, :, c:c + KEYS] += torch.matmul(ds.transpose(-1, -2), q[:, :, a:b])
            if P > 1:
                nxt = (r - step - 1) % P
                if step < P - 1:   # K, V and their accumulators move on
                    shapes = _block_shapes(k, v, lay.size(nxt))
                    buf = comm.ring_shift(buf, sum(math.prod(s) for s in shapes) * 2, sp)
                    kb, vb, dkb, dvb = _unflat(buf, shapes + shapes)
                else:              # one more hop brings each accumulator to its owner
                    half = kb.numel() + vb.numel()
                    dkb, dvb = _unflat(comm.ring_shift(buf[half:], k.numel() + v.numel(), sp),
                                       [tuple(k.shape), tuple(v.shape)])
        return dq, dkb, dvb, None


def _start(send: Tensor, recv_numel: int, sp: SequenceParallel):
    P, r = sp.size, sp.rank
    recv = send.new_empty(recv_numel)
    comm._count("ring", send)
    ops = [dist.P2POp(dist.isend, send, sp.global_rank((r + 1) % P), sp.group),
           dist.P2POp(dist.irecv, recv, sp.global_rank((r - 1) % P), sp.group)]
    return dist.batch_isend_irecv(ops), recv


def _finish(pending) -> Tensor:
    reqs, recv = pending
    for req in reqs:
        req.wait()
    return recv
