"""A hand-written, recomputing backward for the quadratic chunked form (``chunked.py``).

The forward runs without autograd and keeps only its inputs and the states entering every
chunk (N/C · F·V numbers per batch element). The backward walks the blocks of chunks in
reverse, recomputes each chunk's factors and scores, and forms the gradients with batched
matrix products; only the state's gradient is carried between chunks (a Python loop of N/C
small steps, as in the forward). Notation as in ``chunked.py``, per chunk: G the inclusive
cumulative log-gate, Q̃ = φ(q) ⊙ e^{G}, K̃ = φ(k) ⊙ e^{G_last − G}, D = e^{G_last}, E the
entering state, A_ij = Σ_f q_if k_jf e^{G_if − G_jf} (j ≤ i), dO the output's gradient and
dS⁺ the gradient of the state leaving the chunk. Then

    dE   = Q̃ᵀ dO + D ⊙ dS⁺                        (the state's gradient, chunk by chunk, reversed)
    dv   = Aᵀ dO + K̃ dS⁺
    dA   = tril(dO vᵀ)
    dq   = Σ_j dA_ij k_j ⊙ e^{G_i − G_j} + (dO Eᵀ) ⊙ e^{G}
    dk   = Σ_i dA_ij q_i ⊙ e^{G_i − G_j} + (v dS⁺ᵀ) ⊙ e^{G_last − G}

(a per-channel gate contracts the mask through the factors q ⊙ e^{G−m}, k ⊙ e^{m−G}, as the
forward does). The log-gate's gradient needs no chunk terms: φ(q_i) enters only as
φ(q_i) ⊙ e^{B_i} and φ(k_j) only as φ(k_j) ⊙ e^{−B_j}, with B the cumulative gate over the
whole sequence, and the final state as e^{B_N} ⊙ (S_0 + Σ_j (φ(k_j) ⊙ e^{−B_j})ᵀ v_j). So

    ∂L/∂B_i = φ(q_i) ⊙ dφ(q_i) − φ(k_i) ⊙ dφ(k_i)  (+ Σ_v S_N ⊙ dS_N at i = N),
    d lg_t  = Σ_{i ≥ t} ∂L/∂B_i                    (a reversed cumulative sum, in float64)

summed over the features for a gate per token, and Σ_i (i+1)·∂L/∂B_i for a constant per head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from codegen.linear import chunked as _chunked


def chunked_with_grad(fq, fk, v, lg, kind, state, plan, wide):
    """The quadratic chunked form with the backward below. Inputs are expanded to the full batch
    first (autograd sums the gradients of broadcast inputs back)."""
    batch = state.shape[:-2]
    fq, fk, v = (x.expand(*batch, *x.shape[-2:]) for x in (fq, fk, v))
    if kind == "token":
        lg = lg.expand(*batch, lg.shape[-1])
    elif kind == "channel":
        lg = lg.expand(*batch, *lg.shape[-2:])
    if lg is None:
        lg = fq.new_zeros(())                                   # autograd.Function needs a tensor
    return _ChunkedLinear.apply(fq, fk, v, lg, state, kind, plan, wide)


class _ChunkedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fq, fk, v, lg, state, kind, plan, wide):
        keep: list[torch.Tensor] = []
        with torch.no_grad():
            o, final = _chunked.run_blocks(fq, fk, v, None if kind is None else lg, kind, state, plan, wide, False,
                                  keep)
        entering = keep[0] if len(keep) == 1 else torch.cat(keep, dim=-3)                 # [*, N/C, F, V]
        ctx.save_for_backward(fq, fk, v, lg, final, entering)
        ctx.kind, ctx.plan, ctx.wide = kind, plan, wide
        return o, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dfinal):
        fq, fk, v, lg, final, entering = ctx.saved_tensors
        dq, dk, dv, ds = _backward(fq, fk, v, lg, final, entering, do, dfinal, ctx.kind, ctx.plan, ctx.wide)
        dlg = None
        if ctx.kind is not None and ctx.needs_input_grad[3]:
            dlg = _gate_grad(fq, fk, dq, dk, final, dfinal, ctx.kind, lg)
        return dq, dk, dv, dlg, ds, None, None, None


def _backward(fq, fk, v, lg, final, entering, do, dfinal, kind, plan, wide):
    """dq, dk, dv [*batch, N, ·] and the initial state's gradient. The batch dims are flattened
    (bh) and the chunks viewed as [bh, chunks, C, ·]: a block is a range of chunks of one batch
    element, or whole batch elements, so that every operand of a product is contiguous (a
    block sliced across batch elements would be copied by every product). A sequence that is
    not a multiple of C has a second segment, its last partial chunk."""
    batch, (n, f), dv_ = final.shape[:-2], fq.shape[-2:], v.shape[-1]
    bh = math.prod(batch)
    flat = [x.reshape(bh, n, x.shape[-1]) for x in (fq, fk, v)]
    do = torch.zeros_like(flat[2]) if do is None else do.reshape(bh, n, dv_)
    if kind == "head":
        lgs = lg.expand(batch).reshape(bh)
    elif kind is not None:
        lgs = lg.reshape(bh, *lg.shape[len(batch):])
    total = entering.shape[-3]
    entering = entering.reshape(bh, total, f, dv_)
    grads = [torch.empty_like(x) for x in flat]                                           # dq, dk, dv
    c0 = plan[0][1]
    segments = [(0, c0, n // c0)] + ([(n // c0 * c0, n % c0, 1)] if n % c0 else [])

    def blocks(seg):
        """(rows, chunks, block views of q, k, v, dO, the gate, dq, dk, dv, and the chunk index range)."""
        p0, c, cnt = seg
        per = max(1, _chunked.BLOCK_BUDGET // (max(f, dv_, c) * c))                               # chunks per block
        views = [x[:, p0:p0 + cnt * c].unflatten(1, (cnt, c)) for x in (*flat, do, *grads)]
        if kind == "token":
            gate = lgs[:, p0:p0 + cnt * c].unflatten(1, (cnt, c))
        elif kind == "channel":
            gate = lgs[:, p0:p0 + cnt * c].unflatten(1, (cnt, c))
        else:
            gate = None if kind is None else lgs
        i0 = p0 // c0
        if cnt >= per:
            spans = [(b, b + 1, j, min(cnt, j + per)) for b in range(bh) for j in range(0, cnt, per)]
        else:
            k = max(1, per // cnt)
            spans = [(b, min(bh, b + k), 0, cnt) for b in range(0, bh, k)]
        for b0, b1, j0, j1 in spans:
            yield (b0, b1, i0 + j0, i0 + j1, c, [x[b0:b1, j0:j1] for x in views],
                   None if gate is None else gate[b0:b1] if kind == "head" else gate[b0:b1, j0:j1])

    # pass 1: Q̃ᵀdO and D per chunk; then the state's gradient, chunk by chunk in reverse
    p = entering.new_empty(bh, total, f, dv_)
    decay = None if kind is None else entering.new_empty(bh, total, f if kind == "channel" else 1, 1)
    for seg in segments:
        for b0, b1, i0, i1, c, (q, _, _, dob, *_), gate in blocks(seg):
            fac = _factors(q, None, gate, kind, c, wide)
            _mm(fac.q_in.transpose(-1, -2), dob, p[b0:b1, i0:i1])
            if decay is not None:
                decay[b0:b1, i0:i1] = fac.decay
    leaving = torch.empty_like(p)
    ds = final.new_zeros(bh, f, dv_) if dfinal is None else dfinal.reshape(bh, f, dv_)
    for i in range(total - 1, -1, -1):
        leaving[:, i] = ds
        ds = p[:, i] + ds if decay is None else torch.addcmul(p[:, i], decay[:, i], ds)
    # pass 2: every chunk's gradients, given its entering state and dS⁺
    for seg in segments:
        for b0, b1, i0, i1, c, (q, k, vv, dob, dq, dk, dvb), gate in blocks(seg):
            _chunk_grads(q, k, vv, dob, gate, kind, c, wide, entering[b0:b1, i0:i1], leaving[b0:b1, i0:i1],
                         dq, dk, dvb)
    return (*(x.view(*batch, n, x.shape[-1]) for x in grads), ds.view(*batch, f, dv_))


@dataclass
class _Factors:
    """Per chunk: q_in = φ(q) ⊙ e^{G}, k_out = φ(k) ⊙ e^{G_last − G}, decay = e^{G_last}; the
    score operands qt, kt and what multiplies the scores (lmask; None: the causal tril)."""

    q_in: torch.Tensor
    k_out: torch.Tensor | None
    decay: torch.Tensor | None
    qt: torch.Tensor
    kt: torch.Tensor | None
    e: torch.Tensor | None
    lmask: torch.Tensor | None
    qf: torch.Tensor | None
    kf: torch.Tensor | None


def _factors(q, k, lg, kind, c, wide) -> _Factors:
    """q, k [b, g, C, F]; lg: [b] (head), [b, g, C] (token), [b, g, C, F] (channel)."""
    dt = q.dtype
    e = lmask = qf = kf = decay = None
    qt, kt = q, k
    if kind == "head":
        i = torch.arange(c, device=q.device, dtype=dt)
        lam = lg[:, None, None, None]                                                     # [b, 1, 1, 1]
        diff = i[:, None] - i[None, :]
        lmask = torch.exp(torch.where(diff >= 0, diff * lam, float("-inf")))              # [b, 1, C, C]
        qf, kf = torch.exp((i + 1)[:, None] * lam), torch.exp((c - 1 - i)[:, None] * lam)  # [b, 1, C, 1]
        decay = torch.exp(c * lam)
    elif kind == "token":
        G = torch.cumsum(lg.to(torch.float64), dim=-1)                                    # [b, g, C]
        last = G[..., -1:]
        if k is not None:
            tri = torch.ones(c, c, dtype=torch.bool, device=q.device).tril_()
            lmask = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~tri, float("-inf")).to(dt))
            kf = torch.exp((last - G).to(dt))[..., None]
        qf = torch.exp(G.to(dt))[..., None]
        decay = torch.exp(last.to(dt))[..., None]                                         # [b, g, 1, 1]
    elif kind == "channel":
        G = torch.cumsum(lg.to(torch.float64) if wide else lg, dim=-2)                    # [b, g, C, F]
        last = G[..., -1:, :]
        qf = torch.exp(G.to(dt))
        decay = torch.exp(last.to(dt)).transpose(-1, -2)                                  # [b, g, F, 1]
        if k is not None:
            mid = 0.5 * (G[..., :1, :] + last)
            e = torch.exp((G - mid).to(dt))                                               # within e^{±SPAN_LIMIT/2}
            qt, kt = q * e, k / e
            kf = torch.exp((last - G).to(dt))
    return _Factors(q if qf is None else q * qf, None if k is None else k if kf is None else k * kf, decay,
                    qt, kt, e, lmask, qf, kf)


def _chunk_grads(q, k, v, do, lg, kind, c, wide, entering, leaving, dq, dk, dv) -> None:
    """Writes the gradients of one block of chunks [b, g, C, ·] into dq, dk, dv (views)."""
    fac = _factors(q, k, lg, kind, c, wide)
    scores = fac.qt @ fac.kt.transpose(-1, -2)                                            # recomputed: C² per chunk
    scores = scores.tril_() if fac.lmask is None else scores.mul_(fac.lmask)
    _mm(scores.transpose(-1, -2), do, dv)
    dv.add_(fac.k_out @ leaving)                                                          # Aᵀ dO + K̃ dS⁺
    da = do @ v.transpose(-1, -2)                                                         # [b, g, C, C]
    da = da.tril_() if fac.lmask is None else da.mul_(fac.lmask)
    dq_state = do @ entering.transpose(-1, -2)                                            # dO Eᵀ
    dk_state = v @ leaving.transpose(-1, -2)                                              # v dS⁺ᵀ
    if fac.qf is not None:
        dq_state.mul_(fac.qf)
        dk_state.mul_(fac.kf)
    if fac.e is None:
        _mm(da, fac.kt, dq)
        _mm(da.transpose(-1, -2), fac.qt, dk)
    else:
        torch.mul(da @ fac.kt, fac.e, out=dq) if dq.is_contiguous() else dq.copy_((da @ fac.kt).mul_(fac.e))
        dk.copy_((da.transpose(-1, -2) @ fac.qt).div_(fac.e))
    dq.add_(dq_state)
    dk.add_(dk_state)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out = a @ b, written in place (a view of a larger buffer: contiguous unless N % C)."""
    if out.is_contiguous():
        torch.matmul(a, b, out=out)
    else:
        out.copy_(a @ b)


def _gate_grad(fq, fk, dq, dk, final, dfinal, kind, lg):
    """d lg from the identity of the module docstring. Many terms cancel: the reversed sums
    run inside blocks of 64 positions as a triangular product, and across blocks in float64."""
    db = (fq * dq).sub_(fk * dk)                                                          # [*, N, F]
    end = None if dfinal is None else (final * dfinal).sum(-1)                            # [*, F]
    if kind != "channel":
        db = db.sum(-1, keepdim=True)                                                     # [*, N, 1]
        end = None if end is None else end.sum(-1, keepdim=True)
    if end is not None:
        db[..., -1, :] += end
    if kind == "head":
        weight = torch.arange(1, db.shape[-2] + 1, dtype=torch.float64, device=db.device)
        return (db[..., 0].double() @ weight).to(lg.dtype).sum_to_size(lg.shape)         # Σ_i (i+1)·∂L/∂B_i
    out = _reverse_cumsum(db)
    return out if kind == "channel" else out[..., 0]


def _reverse_cumsum(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Σ_{i ≥ t} x_i over dim −2: inside blocks a product with a triangle of ones, across blocks
    in float64 (a plain cumsum over a long non-last dim is ~10× slower, and in fp32 less exact)."""
    n = x.shape[-2]
    pad = -n % block
    xb = torch.nn.functional.pad(x, (0, 0, 0, pad)).unflatten(-2, (-1, block))            # [*, n/B, B, F]
    upper = torch.ones(block, block, dtype=x.dtype, device=x.device).triu_()
    inner = upper @ xb                                                                     # within each block
    totals = inner[..., 0, :].double()                                                    # [*, n/B, F]
    after = torch.flip(torch.cumsum(torch.flip(totals, (-2,)), -2), (-2,)) - totals       # blocks after this one
    return inner.add_(after.to(x.dtype)[..., None, :]).flatten(-3, -2)[..., :n, :]
