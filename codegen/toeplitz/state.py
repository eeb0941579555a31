"""State passing for SSM kernels: what a state contributes to the outputs, what a block of
inputs contributes to the state, and the carry of states across chunks.

Shapes: u [B, T, C] (channels last). States: per-channel diagonal [B, C, M] (complex; real
for Mega's EMA), MIMO [B, M], dense (DPLR) [B, C, S], shift [B, C, S] — the shift register
(u_{t}, u_{t−1}, …, u_{t−S+1}) after token t. Every function here is O(block) in memory:
long spans are walked in blocks of ``BLOCK`` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from codegen.toeplitz.kernels import DenseSSM, ShiftSSM, System, dense_powers, exp_flushed

BLOCK = 4096


def zero_state(sys: System, batch: int, dtype: torch.dtype) -> Tensor:
    """The state before the first token."""
    if isinstance(sys, ShiftSSM):
        return torch.zeros(batch, *sys.taps.shape, dtype=dtype)
    if isinstance(sys, DenseSSM):
        return torch.zeros(batch, *sys.b.shape, dtype=sys.A.dtype)
    sd = sys.log_lam.dtype
    if sys.mimo:
        return torch.zeros(batch, sys.log_lam.shape[0], dtype=sd)
    return torch.zeros(batch, *sys.log_lam.shape, dtype=sd)


def powers(z: Tensor, start: int, count: int) -> Tensor:
    """λ^k for k in [start, start + count), λ = exp(z): [*z.shape, count]."""
    k = torch.arange(start, start + count, dtype=z.real.dtype)
    return exp_flushed(z[..., None] * k)


def _re(x: Tensor) -> Tensor:
    return x.real if x.is_complex() else x


def state_output(sys: System, h: Tensor, n: int) -> Tensor:
    """y_t = scale · Re(c Ā^{t+1} h) for t < n: what the state before a span adds to its
    outputs, [B, n, C_out]."""
    if isinstance(sys, ShiftSSM):
        # h = (u_{−1}, …, u_{−S}); y_t = Σ_j taps[t+1+j] u_{−1−j}
        S = sys.taps.shape[1]
        y = h.new_zeros(h.shape[0], n, h.shape[1])
        for t in range(min(n, S - 1)):
            y[:, t] = (sys.taps[:, t + 1:] * h[..., : S - 1 - t]).sum(-1)
        return y
    out = []
    if isinstance(sys, DenseSSM):
        row = sys.c                                                        # c Ā^{t0+1}, advanced per block
        row = torch.einsum("cs,cst->ct", row, sys.A)
        for t0 in range(0, n, BLOCK):
            b = min(BLOCK, n - t0)
            R = dense_powers(sys.A.transpose(-1, -2), row, b)            # [C, S, b]: (c Ā^{t0+1+j})ᵀ
            out.append(sys.scale * _re(torch.einsum("csj,bcs->bjc", R, h)))
            if t0 + b < n:
                row = torch.einsum("cs,cst->ct", row, torch.linalg.matrix_power(sys.A, b))
        return torch.cat(out, dim=1)
    for t0 in range(0, n, BLOCK):
        b = min(BLOCK, n - t0)
        P = powers(sys.log_lam, t0 + 1, b)
        if sys.mimo:                                                       # P [M, b]
            out.append(sys.scale * _re((h[:, None, :] * P.transpose(0, 1)) @ sys.c.transpose(0, 1)))
        else:                                                              # P [C, M, b]
            out.append(sys.scale * _re((h * sys.c)[..., None] * P).sum(2).transpose(1, 2))
    return torch.cat(out, dim=1)


def input_state(sys: System, u: Tensor) -> Tensor:
    """Σ_t Ā^{T−1−t} B̄ u_t over a span u [B, T, C]: the state the span leaves from a zero start."""
    T = u.shape[1]
    if isinstance(sys, ShiftSSM):
        S = sys.taps.shape[1]
        last = u[:, max(0, T - S):].flip(1).transpose(1, 2)               # (u_{T−1}, u_{T−2}, …)
        return torch.nn.functional.pad(last, (0, S - last.shape[-1]))
    if isinstance(sys, DenseSSM):
        h = torch.zeros(u.shape[0], *sys.b.shape, dtype=sys.A.dtype)
        for t0 in range(0, T, BLOCK):
            b = min(BLOCK, T - t0)
            X = dense_powers(sys.A, sys.b, b).flip(-1)                     # [C, S, b]: Ā^{b−1−j} B̄
            ub = u[:, t0:t0 + b].to(X.dtype).permute(2, 1, 0).contiguous()      # [C, b, B]
            h = advance(sys, h, b) + (X @ ub).permute(2, 0, 1)
        return h
    h = None
    for t0 in range(0, T, BLOCK):
        b = min(BLOCK, T - t0)
        P = powers(sys.log_lam, 0, b).flip(-1)                             # λ^{b−1−j}
        ub = u[:, t0:t0 + b].to(P.dtype)
        if sys.mimo:
            s = (ub @ sys.b.transpose(0, 1).to(P.dtype) * P.transpose(0, 1)).sum(1)
        else:                                                              # [C, B, b] @ [C, b, M]
            s = (ub.permute(2, 0, 1) @ (sys.b[..., None] * P).transpose(1, 2)).transpose(0, 1)
        h = s if h is None else advance(sys, h, b) + s
    return h


def advance(sys: System, h: Tensor, steps: int) -> Tensor:
    """Ā^steps h: the state carried over ``steps`` tokens of zero input."""
    if isinstance(sys, ShiftSSM):
        return torch.nn.functional.pad(h, (steps, 0))[..., : h.shape[-1]]
    if isinstance(sys, DenseSSM):
        return torch.einsum("cst,bct->bcs", torch.linalg.matrix_power(sys.A, steps), h)
    return exp_flushed(steps * sys.log_lam) * h


def final_state(sys: System, u: Tensor, h0: Tensor | None) -> Tensor:
    """The state after the span u [B, T, C] that started from h0."""
    s = input_state(sys, u)
    return s if h0 is None else advance(sys, h0, u.shape[1]) + s


def carry(zT: Tensor, s: Tensor, h0: Tensor | None, block: int = 16) -> tuple[Tensor, Tensor]:
    """States entering each of G chunks, H_g = λ^{Tg} h0 + Σ_{j<g} λ^{T(g−1−j)} s_j, and the
    state after the last, for a diagonal system with log λ^T = zT [F] and per-chunk input
    states s [B, G, F].

    Not a loop over G: the chunks are cut into blocks of ``block``; inside all blocks at once
    a ``block``-step recurrence gives the local prefixes, the block entry states come from the
    same problem one level up (λ^{T·block}, recursively), and the two are joined with
    log-space powers λ^{Tq}. Elementwise work only, O(G·F), ``block``·log_block(G) steps."""
    B, G, F = s.shape
    h0 = torch.zeros(B, F, dtype=s.dtype) if h0 is None else h0
    lamT = exp_flushed(zT)
    if G <= block:
        H, h = [], h0
        for g in range(G):
            H.append(h)
            h = lamT * h + s[:, g]
        return torch.stack(H, dim=1), h
    pad = (-G) % block
    sp = torch.cat([s, s.new_zeros(B, pad, F)], dim=1) if pad else s
    sb = sp.reshape(B, -1, block, F)                                       # [B, K, Q, F]
    local, acc = [], torch.zeros_like(sb[:, :, 0])
    for q in range(block):                                                 # exclusive prefixes, all blocks at once
        local.append(acc)
        acc = lamT * acc + sb[:, :, q]
    E, _ = carry(block * zT, acc, h0, block)                               # block entry states
    q = torch.arange(block, dtype=zT.real.dtype)
    H = torch.stack(local, dim=2) + exp_flushed(q[:, None] * zT) * E[:, :, None]
    H = H.reshape(B, -1, F)[:, :G]
    return H, lamT * H[:, -1] + s[:, -1]
