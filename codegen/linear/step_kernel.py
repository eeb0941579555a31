"""One decoding step of the linear / decayed-linear family as one Triton kernel (issue 13).

    S' = a ⊙ S + φ(k)ᵀ v          S [G, F, V], a [G, F] (the decay of each key feature; 1: none)
    o  = φ(q) S'                   o [G, V]

The torch step (``torch_impl._recurrent`` at one position) runs this as four kernels
(outer product, multiply-add with the decay, product with q, sum) with S read and written
twice; here each program owns a [F, BLOCK_V] column block of one state: S is read once and
written once, q, k, v and a read once. It is used only for a step on a CUDA device with no
gradient wanted (decoding runs under ``torch.no_grad``); on a CPU the torch step runs, and
this kernel is checked against it in Triton's interpreter (tests/codegen/linear) — its speed
is not measured on this project's CPU machines.

Feature maps, the normaliser column of ``norm = "sum"`` and the output scale stay in
``linear_attention`` around the call (they act on one position: nothing to fuse).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: key features handled per loop iteration, value columns per program
BLOCK_F, BLOCK_V = 32, 32


@triton.jit
def _step_kernel(p_q, p_k, p_v, p_a, p_s, p_s_out, p_o, F, V,
                 BLOCK_F: tl.constexpr, BLOCK_V: tl.constexpr):
    i_g, i_v = tl.program_id(0), tl.program_id(1)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    m_v = o_v < V
    b_v = tl.load(p_v + i_g * V + o_v, mask=m_v, other=0.0)                   # read V
    b_o = tl.zeros([BLOCK_V], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        o_f = f0 + tl.arange(0, BLOCK_F)
        m_f = o_f < F
        b_q = tl.load(p_q + i_g * F + o_f, mask=m_f, other=0.0)               # read F (q, k, a)
        b_k = tl.load(p_k + i_g * F + o_f, mask=m_f, other=0.0)
        b_a = tl.load(p_a + i_g * F + o_f, mask=m_f, other=0.0)
        o_s = i_g * F * V + o_f[:, None] * V + o_v[None, :]
        m_s = m_f[:, None] & m_v[None, :]
        b_s = tl.load(p_s + o_s, mask=m_s, other=0.0)                          # read F·V
        b_s = b_a[:, None] * b_s + b_k[:, None] * b_v[None, :]
        tl.store(p_s_out + o_s, b_s, mask=m_s)                                 # write F·V
        b_o += tl.sum(b_q[:, None] * b_s, axis=0)
    tl.store(p_o + i_g * V + o_v, b_o, mask=m_v)                               # write V


def fused_step(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, a: torch.Tensor | None,
               state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One position: fq, fk [..., F], v [..., V], a [..., F] or None (no decay), state
    [..., F, V] (fp32; leading dims broadcast) -> (o [..., V], the new state [..., F, V])."""
    f, width = state.shape[-2], state.shape[-1]
    lead = torch.broadcast_shapes(fq.shape[:-1], fk.shape[:-1], v.shape[:-1], state.shape[:-2],
                                  *(() if a is None else (a.shape[:-1],)))
    g = 1
    for d in lead:
        g *= d

    def flat(t: torch.Tensor, last: tuple[int, ...]) -> torch.Tensor:
        return t.to(torch.float32).expand(*lead, *last).reshape(g, *last).contiguous()

    q_, k_, v_ = flat(fq, (f,)), flat(fk, (f,)), flat(v, (width,))
    a_ = torch.ones(g, f, dtype=torch.float32, device=state.device) if a is None else flat(a, (f,))
    s_ = flat(state, (f, width))
    s_out = torch.empty_like(s_)
    o = torch.empty(g, width, dtype=torch.float32, device=state.device)
    if g:
        _step_kernel[(g, triton.cdiv(width, BLOCK_V))](q_, k_, v_, a_, s_, s_out, o, f, width,
                                                        BLOCK_F=BLOCK_F, BLOCK_V=BLOCK_V)
    return o.reshape(*lead, width), s_out.reshape(*lead, f, width)
