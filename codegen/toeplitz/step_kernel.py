"""One decoding step of a diagonal SSM as one Triton kernel (issue 13).

    h' = λ ⊙ h + b · u          h, λ, b: [C, M] per sequence (complex; real for Mega's EMA)
    y  = scale · Re Σ_m c_m h'_m

The torch step (``torch_impl.recurrent_step``) runs this as several elementwise kernels over
[G, C, M] complex tensors (λ·h, b·u, the sum, c·h, the real part) with h read and written more
than once; here each program owns [BLOCK_C, M] of one sequence's state and reads h, λ, b, c
once, writing h' and y once. Triton has no complex type: complex tensors are read as their
interleaved (real, imaginary) float32 pairs (``torch.view_as_real``).

Used only for a step on a CUDA device in fp32 / complex64 without gradients, per-channel
(not MIMO) diagonal systems; elsewhere the torch step runs. Checked against the torch step in
Triton's interpreter (tests/codegen/toeplitz/test_step_kernel.py); its speed is not measured
on this project's CPU machines.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: channels per program, modes per loop iteration
BLOCK_C, BLOCK_M = 16, 32


@triton.jit
def _diag_step_kernel(p_h, p_lam, p_b, p_c, p_x, p_h_out, p_y, C, M, scale,
                      IS_COMPLEX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    i_g, i_c = tl.program_id(0), tl.program_id(1)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    b_x = tl.load(p_x + i_g * C + o_c, mask=m_c, other=0.0)                   # read C
    b_y = tl.zeros([BLOCK_C], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        o_m = m0 + tl.arange(0, BLOCK_M)
        m_s = m_c[:, None] & (o_m < M)[None, :]
        o_p = o_c[:, None] * M + o_m[None, :]                                   # (channel, mode) of λ, b, c
        o_h = i_g * C * M + o_p                                                 # … of this sequence's h
        if IS_COMPLEX:                                                          # (re, im) pairs
            lr = tl.load(p_lam + 2 * o_p, mask=m_s, other=0.0)
            li = tl.load(p_lam + 2 * o_p + 1, mask=m_s, other=0.0)
            br = tl.load(p_b + 2 * o_p, mask=m_s, other=0.0)
            bi = tl.load(p_b + 2 * o_p + 1, mask=m_s, other=0.0)
            cr = tl.load(p_c + 2 * o_p, mask=m_s, other=0.0)
            ci = tl.load(p_c + 2 * o_p + 1, mask=m_s, other=0.0)
            hr = tl.load(p_h + 2 * o_h, mask=m_s, other=0.0)                    # read C·M (complex)
            hi = tl.load(p_h + 2 * o_h + 1, mask=m_s, other=0.0)
            nr = lr * hr - li * hi + br * b_x[:, None]
            ni = lr * hi + li * hr + bi * b_x[:, None]
            tl.store(p_h_out + 2 * o_h, nr, mask=m_s)                           # write C·M
            tl.store(p_h_out + 2 * o_h + 1, ni, mask=m_s)
            b_y += tl.sum(cr * nr - ci * ni, axis=1)
        else:
            lr = tl.load(p_lam + o_p, mask=m_s, other=0.0)
            br = tl.load(p_b + o_p, mask=m_s, other=0.0)
            cr = tl.load(p_c + o_p, mask=m_s, other=0.0)
            hr = tl.load(p_h + o_h, mask=m_s, other=0.0)
            nr = lr * hr + br * b_x[:, None]
            tl.store(p_h_out + o_h, nr, mask=m_s)
            b_y += tl.sum(cr * nr, axis=1)
    tl.store(p_y + i_g * C + o_c, scale * b_y, mask=m_c)                       # write C


def fused_diag_step(h: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """h [G, C, M] (complex64, or float32 for a real system), x [G, C] float32, λ, b, c [C, M]
    (h's dtype) -> (y [G, C] float32, the new h [G, C, M])."""
    g, ch, m = h.shape
    complex_ = h.is_complex()

    def flat(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        t = t.to(h.dtype).expand(shape).contiguous()
        return torch.view_as_real(t) if complex_ else t

    h_in = flat(h, (g, ch, m))
    h_out = torch.empty_like(h_in)
    y = torch.empty(g, ch, dtype=torch.float32, device=h.device)
    if g and ch:
        _diag_step_kernel[(g, triton.cdiv(ch, BLOCK_C))](
            h_in, flat(lam, (ch, m)), flat(b, (ch, m)), flat(c, (ch, m)), x.to(torch.float32).contiguous(), h_out, y, ch, m, float(scale),
            IS_COMPLEX=complex_, BLOCK_C=BLOCK_C, BLOCK_M=BLOCK_M)
    return y, (torch.view_as_complex(h_out) if complex_ else h_out)
