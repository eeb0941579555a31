"""Hand-written (not generated) helpers of the generated Toeplitz Triton sections
(``triton_gen.py``): device check, scratch buffers, the autograd plumbing around a generated
kernel launch, and the gradients that stay in PyTorch. The generated files import this
module as ``tzs``.

A generated section supplies ``launch(v, pre, skip, post, taps, system, h0, reverse, want_state)``
(one pass of its specialised kernel, returning (z or y, final state or None)); everything here
is written once for every section:

- :class:`SSMMix` — one direction of an SSM mix with its gates, y = post ⊙ (K ∗ (pre ⊙ v) +
  skip ⊙ pre ⊙ v), as an autograd Function. Backward:
  * the input gradient is the anti-causal mix of post ⊙ dy: the same kernel, run over the
    tokens in reverse order with post as its input gate (Kᵀ of a Toeplitz matrix is K read
    backwards);
  * the taps' gradient dK[l] = Σ_i dz_i u_{i−l} (l < N) by FFT correlation in PyTorch, handed
    to PyTorch autograd of the discretisation (vandermonde) for the SSM parameters;
  * the initial / final state terms (y += Re Σ c λ^{t+1} h0, h_N) by PyTorch autograd of
    ``state.py``'s expressions: O(N·C·M) elementwise, run only when a state is given or a
    final state's gradient arrives;
  * the gate gradients elementwise.
- :func:`dense_tables` — a dense (DPLR) system's per-chunk matrices, which its kernel reads;
  :func:`system` — the system an SSMMix call's tensors stand for.
- :class:`MIMOMix` — the same for a MIMO diagonal SSM (S5), its parameter gradients from the
  states of the forward and adjoint passes.
- :func:`lag_correlation` — the dK correlation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from codegen.toeplitz import state as st
from codegen.toeplitz.kernels import DenseSSM, DiagSSM, ShiftSSM, dense_powers

#: tests set this (or SEQDSL_TRITON_NAN_SCRATCH=1): every buffer a kernel writes starts as NaN,
#: so an element that no program writes shows in the result instead of stale memory
NAN_SCRATCH = False

_NO_DEVICE = "Triton kernels need a CUDA device; on a CPU set TRITON_INTERPRET=1 before importing seqdsl"


def check_device(*tensors: Tensor | None) -> None:
    """Raise a clear error for CPU tensors unless Triton's interpreter is on."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise RuntimeError(_NO_DEVICE)


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer a kernel fills (NaN-filled under NAN_SCRATCH / SEQDSL_TRITON_NAN_SCRATCH=1)."""
    if NAN_SCRATCH or os.environ.get("SEQDSL_TRITON_NAN_SCRATCH") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    """The power of two ≥ n within [lo, hi]: a tile width (tl.dot needs ≥ 16)."""
    b = lo
    while b < n and (hi is None or b < hi):
        b *= 2
    return b


def split(x: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(real part, imaginary part) as contiguous real tensors; (x, None) for a real x."""
    if x is None:
        return None, None
    if x.is_complex():
        return x.real.contiguous(), x.imag.contiguous()
    return x.contiguous(), None


def system(z: Tensor | None, b: Tensor | None, c: Tensor):
    """The system of an SSMMix call from its tensors: z = log λ [C, M] (diagonal), z = Ā
    [C, S, S] (dense: DPLR), or z None (shift SSM, c its taps). c includes the scale."""
    if z is None:
        return ShiftSSM(c)
    return DenseSSM(z, b, c, 1.0) if z.dim() == 3 else DiagSSM(z, b, c, 1.0)


@dataclass(frozen=True)
class DenseTables:
    """A dense system's per-channel tables for a chunk of T tokens, each as (real, imaginary)
    fp32 parts: w [C, T, S] = scale·C Ā^(t+1); x [C, S, T] = Ā^(T−1−s) B̄; a [C, S, S] = Ā^T;
    x_last, a_last the same for a short last chunk of n tokens (x's columns s ≥ n zero)."""

    w: tuple[Tensor, Tensor]
    x: tuple[Tensor, Tensor]
    a: tuple[Tensor, Tensor]
    x_last: tuple[Tensor, Tensor]
    a_last: tuple[Tensor, Tensor]


def dense_tables(sys: DenseSSM, T: int, n_last: int = 0) -> DenseTables:
    """The tables of ``sys`` (c = scale·C) for chunks of T tokens, by doubling (dense_powers):
    O(C·S²·log T). ``n_last``: the length of a short last chunk (0: none; its tables repeat)."""
    def parts(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(torch.complex64)
        return x.real.contiguous(), x.imag.contiguous()

    A, b, c = sys.A, sys.b, sys.scale * sys.c
    X = dense_powers(A, b, T)                                                      # [C, S, T]: Ā^j B̄
    R = dense_powers(A.transpose(-1, -2), torch.einsum("cs,cst->ct", c, A), T)   # (c Ā^{t+1})ᵀ [C, S, T]
    AT = torch.linalg.matrix_power(A, T)
    x, a = parts(X.flip(-1)), parts(AT)
    if n_last:
        XL = torch.nn.functional.pad(X[..., :n_last].flip(-1), (0, T - n_last))
        x_last, a_last = parts(XL), parts(torch.linalg.matrix_power(A, n_last))
    else:
        x_last, a_last = x, a
    return DenseTables(parts(R.transpose(1, 2)), x, a, x_last, a_last)


def lag_correlation(dz: Tensor, u: Tensor, length: int, prefix: Tensor | None = None) -> Tensor:
    """G[l, c] = Σ_{b,t} dz[b, t, c] · x[b, t − l, c] for l < ``length``: the gradient of causal
    taps. x is u [B, N, C] with x[−1 − j] = prefix[b, c, j] (a shift register's state), zero
    before that. By FFT: O(N log N) per channel."""
    Bn, N, C = u.shape
    P = 0 if prefix is None else prefix.shape[-1]
    parts = [u.new_zeros(Bn, length, C)]
    if prefix is not None:
        parts.append(prefix.flip(-1).transpose(1, 2).to(u.dtype))   # x[−P], …, x[−1]
    parts.append(u)
    x = torch.cat(parts, dim=1)                                      # x[t] sits at t + length + P
    n = 1 << (x.shape[1] + N).bit_length()
    r = torch.fft.irfft(torch.fft.rfft(x, n=n, dim=1) * torch.fft.rfft(dz, n=n, dim=1).conj(), n=n, dim=1)
    lags = torch.arange(length, device=u.device)
    return r.sum(0)[length + P - lags]                               # r[j] = Σ_t dz_t x'[t + j]


def _flip(x: Tensor | None, reverse: bool) -> Tensor | None:
    return x.flip(1) if (reverse and x is not None) else x


def _sum_like(g: Tensor, like: Tensor) -> Tensor:
    return g.sum_to_size(like.shape) if g.shape != like.shape else g


class SSMMix(torch.autograd.Function):
    """y = post ⊙ (K ∗ u + skip ⊙ u + state terms), u = pre ⊙ v, through a generated kernel.

    Inputs (tensors may be None): v, pre, post [B, N, C] (pre / post possibly broadcast views);
    skip [C]; taps [L, C] (L ≥ T; only the first T enter the kernel, the rest exist so that
    their gradient reaches the SSM parameters); system: DiagSSM (z = log λ, b, c with c the
    output weights including the scale) or ShiftSSM; h0 the initial state. An explicit kernel
    passes z = b = c = None and T = L (all its taps enter the kernel; no state). ``reverse`` runs
    the anti-causal direction (token N − 1 first). Outputs (y, h_N) — h_N None unless asked."""

    @staticmethod
    def forward(ctx, launch, T, reverse, want_state, v, pre, skip, post, taps, z, b, c, h0):
        sys = system(z, b, c)
        y, hN = launch(v, pre, skip, post, taps[:T], sys, h0, reverse, want_state)
        ctx.launch, ctx.T, ctx.reverse = launch, T, reverse
        ctx.save_for_backward(v, pre, skip, post, taps, z, b, c, h0)
        return y, hN

    @staticmethod
    def backward(ctx, dy, dhN):
        v, pre, skip, post, taps, z, b, c, h0 = ctx.saved_tensors
        launch, T, reverse = ctx.launch, ctx.T, ctx.reverse
        need = ctx.needs_input_grad[4:]
        sys = system(z, b, c)
        dy = dy.contiguous()
        u = v * pre if pre is not None else v
        dz = dy * post if post is not None else dy
        # input gradient: the mix read backwards, post ⊙ dy as its input (K ∗ dz reversed + skip ⊙ dz)
        du, _ = launch(dy, post, skip, None, taps[:T], sys, None, not reverse, False)
        dtaps = dz_ = db = dc = dh0 = None
        state_terms = h0 is not None or (dhN is not None and dhN.abs().sum() > 0)
        if state_terms:
            du_s, dz_, db, dc, dh0 = _state_grads(sys, u, h0, dz, dhN, need)
            if du_s is not None:
                du = du + du_s
        dv, dpre, dskip, dpost = _gate_grads(need, du, dz, dy, v, u, pre, post,
                                             lambda: launch(v, pre, skip, None, taps[:T], sys, h0, reverse, False)[0])
        if need[4]:
            L = min(taps.shape[0], u.shape[1])
            g = lag_correlation(_flip(dz, reverse), _flip(u, reverse), L)   # h0's share: _state_grads
            dtaps = torch.cat([g, g.new_zeros(taps.shape[0] - L, g.shape[1])]) if L < taps.shape[0] else g
        return (None, None, None, None, dv, dpre, dskip, dpost, dtaps, dz_, db, dc, dh0)


def _gate_grads(need, du: Tensor, dz: Tensor, dy: Tensor, v: Tensor, u: Tensor, pre: Tensor | None,
                post: Tensor | None, mix):
    """(dv, dpre, dskip, dpost) of y = post ⊙ (mix(u) + skip ⊙ u), u = pre ⊙ v, from du = ∂L/∂u
    and dz = post ⊙ dy; ``mix()`` gives mix(u) + skip ⊙ u (run only for dpost). None where
    ``need`` (v, pre, skip, post) is False."""
    dv = (du * pre if pre is not None else du) if need[0] else None
    dpre = _sum_like(du * v, pre) if need[1] else None
    dskip = (dz * u).sum((0, 1)) if need[2] else None
    dpost = _sum_like(dy * mix(), post) if need[3] else None
    return dv, dpre, dskip, dpost


def _state_grads(sys, u: Tensor, h0: Tensor | None, dz: Tensor, dhN: Tensor | None, need):
    """Gradients of the state terms by PyTorch autograd of state.py's expressions:
    y_t += state_output(h0)_t and h_N = final_state(u, h0). Returns (du, dz, db, dc, dh0)."""
    with torch.enable_grad():
        uu = u.detach().requires_grad_(dhN is not None)
        hh = None if h0 is None else h0.detach().requires_grad_()
        if isinstance(sys, ShiftSSM):
            leaves = {"c": sys.taps.detach().requires_grad_()}
            s = ShiftSSM(leaves["c"])
        else:
            z = sys.A if isinstance(sys, DenseSSM) else sys.log_lam
            leaves = {k: t.detach().requires_grad_() for k, t in (("z", z), ("b", sys.b), ("c", sys.c))}
            s = system(leaves["z"], leaves["b"], leaves["c"])
        outs, grads = [], []
        if hh is not None:
            outs.append(st.state_output(s, hh, u.shape[1]).to(dz.dtype))
            grads.append(dz)
        if dhN is not None:
            outs.append(st.final_state(s, uu, hh))
            grads.append(dhN)
        inputs = [uu, *leaves.values()] + ([hh] if hh is not None else [])
        got = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
    du = got[0]
    rest = dict(zip(leaves, got[1:1 + len(leaves)]))
    dh0 = got[-1] if hh is not None else None
    return du, rest.get("z"), rest.get("b"), rest.get("c"), dh0


class MIMOMix(torch.autograd.Function):
    """One direction of a MIMO diagonal SSM mix (S5), y = post ⊙ (Re(C h) + skip ⊙ u), h_t = λ h_(t−1)
    + B̄ u_t, u = pre ⊙ v, through a generated kernel.

    Inputs: ``launch(v, pre, skip, post, system, h0, reverse, want_state, want_states)`` of the
    section (returns (y, h_N or None, every token's state or None)); v, pre [B, N, C_in], post
    [B, N, C_out] (tensors may be None); skip [C]; z = log λ [M], b = B̄ [M, C_in], c = scale·C
    [C_out, M] (complex); h0 [B, M]. Outputs (y, h_N) — h_N None unless asked.

    Backward, with A_t = ∂L/∂h_t (PyTorch's complex convention ∂/∂Re + i ∂/∂Im) and e = post ⊙ dy:
    conj(A_t) = Σ_(s≥t) λ^(s−t) Cᵀ e_s is the state of the adjoint system (the same λ, input matrix
    Cᵀ, output matrix B̄ᵀ) run backwards, whose output is the input gradient. Both passes store
    their states (H_t forward, conj(A_t) adjoint: O(B·N·M)); then, in PyTorch,
    dB̄ = Σ_t A_t u_tᵀ, dC = Σ_t e_t H_tᴴ, d log λ = Σ_t conj(λ H_(t−1)) A_t, dh0 = conj(λ) A_0.
    The final state's share (when its gradient arrives) by PyTorch autograd of state.final_state."""

    @staticmethod
    def forward(ctx, launch, reverse, want_state, v, pre, skip, post, z, b, c, h0):
        sys = DiagSSM(z, b, c, 1.0, mimo=True)
        y, hN, _ = launch(v, pre, skip, post, sys, h0, reverse, want_state)
        ctx.launch, ctx.reverse = launch, reverse
        ctx.save_for_backward(v, pre, skip, post, z, b, c, h0)
        return y, hN

    @staticmethod
    def backward(ctx, dy, dhN):
        v, pre, skip, post, z, b, c, h0 = ctx.saved_tensors
        launch, reverse = ctx.launch, ctx.reverse
        need = ctx.needs_input_grad[3:]          # v, pre, skip, post, z, b, c, h0
        dz_ = db = dc = dh0 = None
        sys = DiagSSM(z, b, c, 1.0, mimo=True)
        adjoint = DiagSSM(z, c.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous(), 1.0, mimo=True)
        dy = dy.contiguous()
        u = v * pre if pre is not None else v
        e = dy * post if post is not None else dy
        params = any(need[4:])
        # input gradient: the adjoint system read the other way, post ⊙ dy its input (+ skip ⊙ e)
        du, _, S = launch(dy, post, skip, None, adjoint, None, not reverse, False, params)
        if params or need[3]:                    # the forward states; the output without post
            zval, _, H = launch(v, pre, skip, None, sys, h0, reverse, False, params)
        if params:
            uu, ee, H, S = (_flip(x, reverse) for x in (u, e, H, S))   # processing order
            Bn, N, M = H.shape
            A = S.conj()
            rows = Bn * N
            db = A.reshape(rows, M).transpose(0, 1) @ uu.reshape(rows, -1).to(A.dtype)
            dc = ee.reshape(rows, -1).transpose(0, 1).to(H.dtype) @ H.conj().reshape(rows, M)
            first = h0 if h0 is not None else H.new_zeros(Bn, M)
            prev = torch.cat([first[:, None], H[:, :-1]], dim=1)          # H_(t−1), H_(−1) = h0
            dz_ = (torch.exp(z) * (prev * S).sum((0, 1))).conj()
            if h0 is not None:
                dh0 = (torch.exp(z) * S[:, 0]).conj()
        if dhN is not None and dhN.abs().sum() > 0:
            du_s, dz_s, db_s, dh0_s = _mimo_final_state_grads(z, b, _flip(u, reverse), h0, dhN)
            du = du + _flip(du_s, reverse).to(du.dtype)
            dz_ = dz_s if dz_ is None else dz_ + dz_s
            db = db_s if db is None else db + db_s
            if h0 is not None:
                dh0 = dh0_s if dh0 is None else dh0 + dh0_s
        dv, dpre, dskip, dpost = _gate_grads(need, du, e, dy, v, u, pre, post, lambda: zval)
        return (None, None, None, dv, dpre, dskip, dpost, dz_, db, dc, dh0)


def _mimo_final_state_grads(z: Tensor, b: Tensor, u: Tensor, h0: Tensor | None, dhN: Tensor):
    """The final state's share of the gradients, h_N = final_state(u, h0), by PyTorch autograd of
    state.py's expression (u in processing order): (du, dz, db, dh0)."""
    with torch.enable_grad():
        leaves = [u.detach().requires_grad_(), z.detach().requires_grad_(), b.detach().requires_grad_()]
        hh = None if h0 is None else h0.detach().requires_grad_()
        sys = DiagSSM(leaves[1], leaves[2], leaves[2].new_zeros(1, b.shape[0]), 1.0, mimo=True)
        hN = st.final_state(sys, leaves[0], hh)
        got = torch.autograd.grad(hN, leaves + ([hh] if hh is not None else []), dhN, allow_unused=True)
    return got[0], got[1], got[2], (got[3] if hh is not None else None)
