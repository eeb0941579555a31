"""SSM kernel generators: parameters → discretised state space → convolution kernel.

An SSM h_t = Ā h_{t−1} + B̄ u_t, y_t = C h_t unrolls to y = K ∗ u with K_l = C Ā^l B̄
(ANCHORS, "SSM as convolution"). The parameters are named and shaped as the checker
creates them (seqdsl/check/builtins_mix.py, ``_ssm_shapes_all``); this module turns them
into one of three discretised forms, which the algorithms of ``torch_impl`` consume:

- :class:`DiagSSM` — diagonal Ā = diag(λ): S4D, DSS, DLR, S5 (``mimo``), Mega's EMA.
  Stored as log λ so that powers are exp(l·log λ) (a Vandermonde product, no cumulative
  products that could underflow).
- :class:`DenseSSM` — a dense Ā per channel: S4's DPLR A = Λ − P P* after discretisation.
- :class:`ShiftSSM` — H3's shift SSM: Ā the shift matrix, B = e₀, so K_l = C_l for l < S.

Conventions (the same everywhere in the family):

- A = −exp(log_A_real) + i·A_imag (Re A < 0 by construction), Δ = exp(log_dt).
- ``conj=True``: the tensors hold one mode of each conjugate pair (M = S/2); the real system
  has the 2M modes {λ, λ̄}, hence K = 2·Re(Σ over the half) (S4D, S5). ``conj=False``: the M = S
  modes are used as they are, K = Re(Σ). For DPLR the conjugate half is materialised (the
  rank-one term couples the two halves), so its factor is 1.
- diag discretisations (per mode, B = 1 folded into C as S4D does; S5 keeps its B):
  zoh      λ = exp(ΔA),                   B̄ = (exp(ΔA) − 1)/A            (S4D)
  bilinear λ = (1 + ΔA/2)/(1 − ΔA/2),     B̄ = Δ/(1 − ΔA/2)               (S4)
  dss      λ = exp(ΔA),                   B̄ = (exp(ΔA) − 1)/(A (exp(ΔA·L) − 1))
           — DSS-softmax (Gupta et al. 2022): the kernel is W·Λ⁻¹·row-softmax(ΔΛ·l) over
           l < L, so it depends on the kernel length L (that of the whole sequence).
           Re A < 0 here, so DSS's shift for positive real parts never applies.
  none     λ = exp(A),                    B̄ = 1                          (DLR: K_l = Re Σ C λ^l)
- DPLR (S4, Gu et al. 2022): A = diag(Λ) − P P* with P shared by the channels (the form
  S4's Cauchy/Woodbury algorithm computes: its low-rank term is P Qᵀ with Q = P̄).
  The kernel is computed exactly from the dense discretised Ā — ``bilinear`` Ā = (I − ΔA/2)⁻¹
  (I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ΔB; ``zoh`` Ā = exp(ΔA), B̄ = A⁻¹(Ā − I)B (both from one
  exponential of the augmented matrix [[ΔA, ΔB], [0, 0]]); ``none`` Ā = exp(A) —
  by blocked powers: K[l0 + j] = (C Ā^{l0}) (Ā^j B̄), O(L·S) per channel after O(b·S²) set-up.
  This replaces S4's Cauchy kernel at the roots of unity (same result, no FFT of the
  generating function, and the same Ā serves the state-passing algorithms).
- Mega's EMA (Ma et al. 2023, paper naming): per channel and EMA dimension h,
  α = σ(alpha), δ = σ(delta), h_t = (1 − α δ) h_{t−1} + α β u_t, y_t = Σ_h C_h h_t, i.e.
  K_l = Σ_h C_h α_h β_h (1 − α_h δ_h)^l. Mega's reference multiplies the output by
  1/√(ndim) at run time; here that factor is part of C's initialisation instead.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("shift", "diag", "dplr", "ema")
DISCS = ("zoh", "bilinear", "dss", "none")
INITS = ("s4d_lin", "s4d_inv", "s4d_real", "legs", "dss", "dlr", "random")

DT_MIN, DT_MAX = 1e-3, 1e-1

# exp(x) for x below this is flushed to 0: far below anything the outputs can resolve, and
# left alone it becomes a denormal number, which makes every product that reads it ~100×
# slower on x86 (S4D's powers λ^l reach 1e-89 within a few thousand taps).
_EXP_FLOOR = {torch.float16: -10.0, torch.bfloat16: -80.0, torch.float32: -80.0, torch.float64: -700.0}


def exp_flushed(x: Tensor) -> Tensor:
    """exp(x), with results whose magnitude is below e^-80 (fp32; e^-700 fp64) set to 0."""
    re = x.real if x.is_complex() else x
    tiny = re < _EXP_FLOOR.get(re.dtype, -80.0)
    return torch.where(tiny, 0, torch.exp(torch.where(tiny, 0, x)))   # no denormal anywhere, backward too


# ---- discretised forms ----------------------------------------------------------------


@dataclass(frozen=True)
class DiagSSM:
    """h_t = λ ⊙ h_{t−1} + b u_t, y_t = scale · Re Σ_m c_m h_{t,m}.

    Per channel: log_lam, b, c are [C, M] (each channel its own SSM with a scalar input).
    MIMO (S5): log_lam [M] shared, b [M, C_in], c [C_out, M]. log_lam is complex, or real for
    Mega's EMA."""

    log_lam: Tensor
    b: Tensor
    c: Tensor
    scale: float
    mimo: bool = False
    # DSS with Re A free: modes with Re(log λ) > 0 grow, so their b holds B̄·λ^{L−1} and their
    # taps are evaluated from the end of the length-L kernel: K_l = Re(c b λ^{−(L−1−l)}).
    from_end: Tensor | None = None
    length: int | None = None

    @property
    def channels(self) -> int:
        return self.c.shape[0]


@dataclass(frozen=True)
class DenseSSM:
    """h_t = Ā h_{t−1} + b u_t, y_t = scale · Re(c · h_t), per channel: Ā [C, S, S], b, c [C, S]."""

    A: Tensor
    b: Tensor
    c: Tensor
    scale: float = 1.0

    @property
    def channels(self) -> int:
        return self.c.shape[0]


@dataclass(frozen=True)
class ShiftSSM:
    """The shift register h_t = (u_t, h_{t−1}[:-1]), y_t = Σ_k taps_k h_{t,k}: K_l = taps[:, l]."""

    taps: Tensor   # [C, S]

    @property
    def channels(self) -> int:
        return self.taps.shape[0]


System = DiagSSM | DenseSSM | ShiftSSM


def _need(params: dict[str, Tensor], name: str, kind: str, disc: str) -> Tensor:
    if name not in params or params[name] is None:
        have = ", ".join(sorted(params)) or "none"
        raise ValueError(f"ssm({kind}, disc={disc}) needs the parameter {name!r} (given: {have})")
    return params[name]


def _cplx(re: Tensor, im: Tensor) -> Tensor:
    return torch.complex(re, im)


def _diag_disc(A: Tensor, dt: Tensor | None, disc: str, length: int | None,
               dtA: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(log λ, B̄, from_end) of a diagonal continuous-time A under ``disc`` (see the module
    docstring). ``dtA`` overrides Δ·A (DSS's separate Δ for Re A and Im A)."""
    if disc == "none":
        return A, torch.ones_like(A), None
    dtA = dt * A if dtA is None else dtA
    if disc == "zoh":
        return dtA, torch.expm1(dtA) / A, None
    if disc == "bilinear":
        half = dtA / 2
        return torch.log1p(half) - torch.log1p(-half), dt / (1 - half), None
    if disc == "dss":
        if length is None:
            raise ValueError("disc=dss normalises the kernel over its length L: pass the length")
        grow = dtA.real > 0          # DSS: evaluate these from the end, B̄·λ^{L−1} = (1 − e^{−x})/(A(1 − e^{−xL}))
        if not bool(grow.any()):
            return dtA, torch.expm1(dtA) / (A * torch.expm1(dtA * length)), None
        x = torch.where(grow, -dtA, dtA)
        return dtA, torch.expm1(x) / (A * torch.expm1(x * length)), grow
    raise ValueError(f"unknown discretisation {disc!r}; expected one of {', '.join(DISCS)}")


def _per_channel(x: Tensor, channels: int) -> Tensor:
    """A parameter shared by channel groups ([G, ...], S4's n_ssm) for all ``channels``:
    channel c uses row c mod G (S4's ``repeat(x, 't n -> (v t) n')``)."""
    if x.shape[0] == channels:
        return x
    if channels % x.shape[0]:
        raise ValueError(f"an SSM parameter shared by {x.shape[0]} groups does not divide {channels} channels")
    return x.repeat(channels // x.shape[0], *([1] * (x.dim() - 1)))


def discretize(kind: str, params: dict[str, Tensor], *, disc: str, conj: bool = True, mimo: bool = False,
               length: int | None = None) -> System:
    """The discretised SSM of ``kind`` with ``params``. ``length`` is the kernel length, needed
    only by ``disc=dss`` (DSS normalises its kernel over the sequence)."""
    if kind not in KINDS:
        raise ValueError(f"unknown SSM kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind != "diag" and mimo:
        raise ValueError(f"ssm({kind}) has no MIMO form; mimo=true applies to diagonal SSMs (S5)")
    if kind == "shift":
        return ShiftSSM(_need(params, "C_re", kind, disc))
    if kind == "ema":
        alpha = torch.sigmoid(_need(params, "alpha", kind, disc))
        delta = torch.sigmoid(_need(params, "delta", kind, disc))
        beta = _need(params, "beta", kind, disc)
        return DiagSSM(torch.log1p(-alpha * delta), alpha * beta, _need(params, "C_re", kind, disc), 1.0)
    if disc not in DISCS:
        raise ValueError(f"unknown discretisation {disc!r}; expected one of {', '.join(DISCS)}")
    # Re A: −exp(log_A_real) (S4, S4D, S5) or a free A_real (DSS, kept bounded by disc = dss)
    re = params["A_real"] if "A_real" in params else -torch.exp(_need(params, "log_A_real", kind, disc))
    A = _cplx(re, _need(params, "A_imag", kind, disc))
    c = _cplx(_need(params, "C_re", kind, disc), _need(params, "C_im", kind, disc))
    dt = None if disc == "none" else torch.exp(_need(params, "log_dt", kind, disc))
    if kind == "diag":
        scale = 2.0 if conj else 1.0
        if mimo:   # S5: Δ per state, B [M, C_in]
            log_lam, bbar, _ = _diag_disc(A, dt, disc, length)
            b = _cplx(_need(params, "B_re", kind, disc), _need(params, "B_im", kind, disc))
            return DiagSSM(log_lam, bbar[:, None] * b, c, scale, mimo=True)
        A = _per_channel(A, c.shape[0])
        dtA = None
        if dt is not None and dt.dim() == 2:   # DSS: Δ_re·Re A + i·Δ_im·Im A
            dtA = torch.complex(dt[:, :1] * A.real, dt[:, 1:] * A.imag)
            dt = None
        log_lam, bbar, grow = _diag_disc(A, None if dt is None else dt[:, None], disc, length, dtA)
        return DiagSSM(log_lam, bbar, c, scale, from_end=grow, length=length if grow is not None else None)
    # dplr
    if disc == "dss":
        raise ValueError("disc=dss is DSS's normalisation of a diagonal kernel; a DPLR kernel takes zoh, "
                         "bilinear or none")
    p = _cplx(_need(params, "P_re", kind, disc), _need(params, "P_im", kind, disc))
    b = _cplx(_need(params, "B_re", kind, disc), _need(params, "B_im", kind, disc))
    channels = c.shape[0]
    A, b = _per_channel(A, channels), _per_channel(b, channels)
    p = _per_channel(p, channels) if p.dim() == 2 else p.expand(channels, -1)   # [half]: one P for all
    if conj:   # materialise the conjugate half: the rank-one term couples the two halves
        A, p, b, c = (torch.cat([x, x.conj()], dim=-1) for x in (A, p, b, c))
    full = torch.diag_embed(A) - p[:, :, None] * p.conj()[:, None, :]    # [C, S, S]  Λ − P P*
    eye = torch.eye(full.shape[-1], dtype=full.dtype)
    if disc == "none":
        return DenseSSM(torch.linalg.matrix_exp(full), b, c)
    dA = dt[:, None, None] * full
    if disc == "zoh":
        # Van Loan: exp([[ΔA, ΔB], [0, 0]]) = [[Ā, B̄], [0, 1]] with B̄ = A⁻¹(e^{ΔA} − I)B, without
        # the cancellation of e^{ΔA} − I (which costs fp32 three digits at Δ = 1e-3)
        S = full.shape[-1]
        aug = torch.zeros(full.shape[0], S + 1, S + 1, dtype=full.dtype)
        aug[:, :S, :S] = dA
        aug[:, :S, S] = dt[:, None] * b
        E = torch.linalg.matrix_exp(aug)
        return DenseSSM(E[:, :S, :S], E[:, :S, S], c)
    back = eye - dA / 2
    return DenseSSM(torch.linalg.solve(back, eye + dA / 2),
                    torch.linalg.solve(back, (dt[:, None] * b)[..., None])[..., 0], c)


# ---- kernels --------------------------------------------------------------------------


def _two_level(z: Tensor, length: int) -> tuple[int, int, Tensor, Tensor, Tensor]:
    """l = k·b + j: (b, k_count, λ^j [C, M, b], λ^{k·b} [C, M, k_count], j as reals)."""
    b = 1 << max(4, min(12, math.ceil(math.log2(max(1.0, math.sqrt(length))))))
    k_count = -(-length // b)
    rd = z.real.dtype
    j = torch.arange(b, dtype=rd)
    return b, k_count, exp_flushed(z[..., None] * j), exp_flushed(z[..., None] * (torch.arange(k_count, dtype=rd) * b)), j


class _Vandermonde(torch.autograd.Function):
    """K[c, l] = Re Σ_m w[c, m] exp(l·z[c, m]) for l < L.

    Two levels, l = k·b + j with b ≈ √L: λ^l = λ^{kb}·λ^j, so K = Re((w λ^{kb})ᵀ_k · λ^j) is one
    batched matrix product of [C, L/b, M] by [C, M, b] — C·M·L multiply-adds and only
    C·M·(b + L/b) exponentials (the one-level Vandermonde spends C·M·L exponentials and as
    much memory). Backward likewise, with PyTorch's convention for complex inputs
    (grad = ∂/∂Re + i ∂/∂Im): grad_w = Σ_l g_l conj(λ^l), grad_z = conj(w) Σ_l g_l·l·conj(λ^l)."""

    @staticmethod
    def forward(ctx, w: Tensor, z: Tensor, length: int) -> Tensor:
        ctx.save_for_backward(w, z)
        ctx.length = length
        C = w.shape[0]
        _, k_count, Pj, Qk, _ = _two_level(z, length)
        A = (w[..., None] * Qk).transpose(1, 2)                   # [C, K, M]  w λ^{kb}
        if A.is_complex():   # Re(A·P) = [Re A, −Im A]·[Re P; Im P], a real product
            out = torch.cat([A.real, -A.imag], dim=-1) @ torch.cat([Pj.real, Pj.imag], dim=1)
        else:
            out = A @ Pj                                          # read C·M·(K + b), write C·L
        return out.reshape(C, -1)[:, :length]

    @staticmethod
    def backward(ctx, g: Tensor):
        w, z = ctx.saved_tensors
        C = w.shape[0]
        b, k_count, Pj, Qk, j = _two_level(z, ctx.length)
        gp = torch.nn.functional.pad(g, (0, k_count * b - ctx.length)).reshape(C, k_count, b).to(Pj.dtype)
        Pc = Pj.conj().transpose(1, 2)                            # [C, b, M]
        G = gp @ Pc                                               # Σ_j g conj(λ^j)      [C, K, M]
        Gj = (gp * j) @ Pc                                        # Σ_j g·j conj(λ^j)
        Qc = Qk.conj().transpose(1, 2)                            # [C, K, M]
        kb = (torch.arange(k_count, dtype=j.dtype) * b)[:, None]
        gw = (Qc * G).sum(1)
        gz = (Qc * (kb * G + Gj)).sum(1) * w.conj()
        return (gw if ctx.needs_input_grad[0] else None), (gz if ctx.needs_input_grad[1] else None), None


def vandermonde(w: Tensor, log_lam: Tensor, length: int) -> Tensor:
    """K[c, l] = Re Σ_m w[c, m] λ[c, m]^l (l < length), λ = exp(log_lam): [C, length]."""
    if w.is_complex() or log_lam.is_complex():
        cd = torch.promote_types(w.dtype, log_lam.dtype)
        cd = cd if cd.is_complex else (torch.complex128 if cd == torch.float64 else torch.complex64)
        w, log_lam = w.to(cd), log_lam.to(cd)
    return _Vandermonde.apply(w, log_lam, length)


def dense_powers(A: Tensor, x: Tensor, count: int) -> Tensor:
    """[x, A x, A² x, …, A^{count−1} x] for A [C, S, S], x [C, S]: [C, S, count], by doubling."""
    cols = x[..., None]
    power = A
    while cols.shape[-1] < count:
        cols = torch.cat([cols, power @ cols], dim=-1)
        if cols.shape[-1] < count:
            power = power @ power
    return cols[..., :count]


def dense_kernel(sys: DenseSSM, length: int, block: int = 256) -> Tensor:
    """K[c, l] = scale · Re(c Ā^l B̄), [C, length], in blocks of ``block`` taps:
    K[l0 + j] = (c Ā^{l0}) · (Ā^j B̄)."""
    block = max(1, min(block, length))
    X = dense_powers(sys.A, sys.b, block)                                  # [C, S, block]
    A_block = torch.linalg.matrix_power(sys.A, block)
    row = sys.c                                                            # c Ā^{l0}
    out = []
    for l0 in range(0, length, block):
        n = min(block, length - l0)
        out.append(sys.scale * torch.einsum("cs,csl->cl", row, X[..., :n]).real)
        if l0 + block < length:
            row = torch.einsum("cs,cst->ct", row, A_block)
    return torch.cat(out, dim=-1)


def system_kernel(sys: System, length: int) -> Tensor:
    """The first ``length`` taps of the kernel of a discretised SSM: [length, C], or
    [length, C_out, C_in] for a MIMO system."""
    if isinstance(sys, ShiftSSM):
        C, S = sys.taps.shape
        n = min(S, length)
        K = sys.taps[:, :n].transpose(0, 1)
        return torch.cat([K, K.new_zeros(length - n, C)], dim=0) if n < length else K
    if isinstance(sys, DenseSSM):
        return dense_kernel(sys, length).transpose(0, 1)
    if sys.mimo:
        ls = torch.arange(length, dtype=sys.c.real.dtype)
        V = exp_flushed(sys.log_lam[None, :] * ls[:, None])                # [L, M]
        return sys.scale * torch.einsum("lm,om,mi->loi", V, sys.c, sys.b).real
    w = sys.scale * sys.c * sys.b
    if sys.from_end is None:
        return vandermonde(w, sys.log_lam, length).transpose(0, 1)
    if length > sys.length:
        raise ValueError(f"a DSS mode with Re(ΔΛ) > 0 grows: its kernel is defined up to the normalisation "
                         f"length {sys.length}, not {length} taps")
    fe = sys.from_end
    z = torch.where(fe, -sys.log_lam, sys.log_lam)                          # Re z ≤ 0 for every mode
    K = vandermonde(torch.where(fe, 0, w), z, length)
    K_end = vandermonde(torch.where(fe, w, 0), z, sys.length).flip(-1)[:, :length]   # λ^{−(L−1−l)}
    return (K + K_end).transpose(0, 1)


def ssm_kernel(kind: str, params: dict[str, Tensor], length: int, *, disc: str, conj: bool = True,
               mimo: bool = False, kernel_length: int | None = None) -> Tensor:
    """The convolution kernel K [length, C] (MIMO: [length, C_out, C_in]) of an SSM.

    ``kernel_length`` is the L of DSS's normalisation (default ``length``)."""
    sys = discretize(kind, params, disc=disc, conj=conj, mimo=mimo, length=kernel_length or length)
    return system_kernel(sys, length)


# ---- initialisations ------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def legs_nplr(half: int) -> tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS of size S = 2·half in S4's normal-plus-low-rank form, one mode per conjugate
    pair (positive imaginary parts, largest first): (Λ [half], P [half], B [half]), complex128,
    with A_LegS = V (Λ − P P*) V* over the conjugate-extended basis V.

    A_LegS[n, k] = −√(2n+1)√(2k+1) (n > k), −(n+1) (n = k), 0 (n < k); B_n = √(2n+1) (S4's
    ``transition('legs')``). With p_n = √(n + 1/2), A + p pᵀ = −I/2 + (skew-symmetric)."""
    S = 2 * half
    q = torch.arange(S, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    A = -(torch.tril(r[:, None] * r[None, :], diagonal=-1) + torch.diag(q + 1))
    p = torch.sqrt(q + 0.5)
    skew = A + p[:, None] * p[None, :] + 0.5 * torch.eye(S, dtype=torch.float64)
    evals, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))          # skew = V diag(i·evals) V*
    order = torch.argsort(evals, descending=True)[:half]
    V = V[:, order]
    lam = torch.complex(torch.full((half,), -0.5, dtype=torch.float64), evals[order])
    return lam, V.conj().T @ p.to(V.dtype), V.conj().T @ r.to(V.dtype)


def _uniform(shape, lo: float, hi: float, g) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _normal(shape, std: float, g) -> Tensor:
    return std * torch.randn(shape, generator=g, dtype=torch.float64)


def _modes(shape) -> Tensor:
    """The mode index n along the last axis, broadcast to ``shape``."""
    return torch.arange(shape[-1], dtype=torch.float64).expand(shape)


def _A_init(init: str, name: str, shape, g, blocks: int = 1) -> Tensor:
    half = shape[-1]
    n = _modes(shape)
    if init in ("legs", "dss"):
        if half % blocks:
            raise ValueError(f"blocks = {blocks} must divide the {half} modes of Λ")
        lam = legs_nplr(half // blocks)[0].repeat(blocks)      # S5's block-diagonal HiPPO: copies
        return (torch.log(-lam.real) if name == "log_A_real" else lam.imag).expand(shape).clone()
    if name == "log_A_real":
        if init == "s4d_real":
            return torch.log(n + 1)
        if init == "dlr":   # log λ = −Δ/2 + 2πi n/M with Δ log-uniform in [1e-4, 1e-1] (DLR)
            return torch.log(0.5 * torch.exp(_uniform(shape, math.log(1e-4), math.log(1e-1), g)))
        return torch.full(shape, math.log(0.5), dtype=torch.float64)
    if init == "s4d_lin":
        return math.pi * n
    if init == "s4d_inv":   # S4D-Inv with S = 2·half states: (S/π)(S/(2n+1) − 1)
        S = 2 * half
        return S / math.pi * (S / (2 * n + 1) - 1)
    if init == "s4d_real":
        return torch.zeros(shape, dtype=torch.float64)
    if init == "dlr":
        return 2 * math.pi * n / half
    return half * _uniform(shape, 0.0, 1.0, g)   # random: S4's random imaginary parts, (S/2)·U[0, 1)


def _init_one(kind: str, init: str, name: str, shape: tuple[int, ...], g,
              dt_range: tuple[float, float] | None = None, blocks: int = 1) -> Tensor:
    if name == "log_dt":
        lo, hi = dt_range or (DT_MIN, DT_MAX)
        if len(shape) == 2 and shape[-1] == 2:   # DSS's separate Δ (re, im): one draw per channel, tiled
            return _uniform(shape[:1], math.log(lo), math.log(hi), g)[:, None].expand(shape).clone()
        return _uniform(shape, math.log(lo), math.log(hi), g)
    if kind == "shift":
        if name != "C_re":
            raise ValueError(f"ssm(shift) has no parameter {name!r}")
        # H3's shift kernel: kaiming_uniform_(a=√5) of C [H, 1, S], i.e. U(±1/√S)
        return _uniform(shape, -1.0, 1.0, g) / math.sqrt(shape[-1])
    if kind == "ema":                                        # Mega's MultiHeadEMA.reset_parameters
        if name in ("alpha", "delta"):
            return _normal(shape, 0.2, g)
        if name == "beta":
            sign = 1.0 - 2.0 * (_modes(shape) % 2)          # +1, −1, +1, … over the EMA dims
            return sign + _normal(shape, 0.02, g)
        if name == "C_re":
            return _normal(shape, shape[-1] ** -0.5, g)      # γ ~ N(0, 1) times Mega's 1/√ndim
        raise ValueError(f"ssm(ema) has no parameter {name!r}")
    if name == "A_real":   # Re A stored as it is (DSS): the negative of exp(log_A_real)'s init
        return -torch.exp(_A_init(init, "log_A_real", shape, g, blocks))
    if name in ("log_A_real", "A_imag"):
        return _A_init(init, name, shape, g, blocks)
    if name in ("C_re", "C_im"):
        # complex N(0, 1) as S4/S4D/S5; DLR scales W by 1/M
        return _normal(shape, 1.0 / shape[-1] if init == "dlr" else 0.5 ** 0.5, g)
    if name in ("P_re", "P_im"):
        if init != "legs":
            return torch.zeros(shape, dtype=torch.float64)
        P = legs_nplr(shape[-1])[1]
        return (P.real if name == "P_re" else P.imag).expand(shape).clone()
    if name in ("B_re", "B_im"):
        if kind == "diag":   # S5's B: V⁻¹ B with B Lecun-normal; complex variance 1/C_in
            return _normal(shape, (0.5 / shape[-1]) ** 0.5, g)
        if init == "legs":
            B = legs_nplr(shape[-1])[2]
            return (B.real if name == "B_re" else B.imag).expand(shape).clone()
        return torch.ones(shape, dtype=torch.float64) if name == "B_re" else torch.zeros(shape, dtype=torch.float64)
    raise ValueError(f"ssm({kind}) has no parameter {name!r}")


def init_ssm_params(kind: str, init: str, shapes: dict[str, tuple[int, ...]], generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32,
                    dt_range: tuple[float, float] | None = None) -> dict[str, Tensor]:
    """Initial values of SSM parameters, one tensor per name in ``shapes``.

    Each parameter is a function of its own name and shape (the backend creates them one by
    one): the last axis indexes the modes (M = S/2 with conjugate symmetry).

    - log_dt: log-uniform Δ in ``dt_range`` (default [1e-3, 1e-1]); [C, 2] (DSS's separate Δ for
      Re A and Im A): one draw per channel for both, as DSS.
    - A_real (Re A free, DSS): the real parts of the init below (−1/2 for dss/legs).
    - s4d_lin: A = −1/2 + iπn;  s4d_inv: A = −1/2 + i(S/π)(S/(2n+1) − 1);  s4d_real: A = −(n+1)
      (Gu et al. 2022, S4D).
    - legs: Λ, P, B of HiPPO-LegS in S4's normal-plus-low-rank form (:func:`legs_nplr`); for a
      diagonal kernel this is S4D-LegS (Λ alone; B is folded into C).
    - dss: Λ from the normal part of HiPPO-LegS, as DSS (the same Λ as legs).
    - ``legs:k`` / ``dss:k``: Λ block-diagonal, k copies of the eigenvalues of a LegS k times
      smaller (S5's ``blocks``).
    - dlr: λ = exp(−Δ/2 + 2πi n/M), Δ log-uniform in [1e-4, 1e-1]: on a ring just inside the unit
      circle, phases spread over the whole circle (Gupta, Mehta & Berant 2022); C scaled by 1/M.
    - random: diagonal Λ = −1/2 + i·(S/2)·U[0, 1) (S4's random imaginary parts); shift: C ~ U(±1/√S)
      (H3's kaiming_uniform_(a=√5));
      ema: as Mega (α, δ ~ N(0, 0.2); β = ±1 + N(0, 0.02); C ~ N(0, 1)/√ndim).
    - C: complex N(0, 1); S5's B: complex N(0, 1/C_in); DPLR's B and P: LegS's (legs) or B = 1, P = 0.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown SSM kind {kind!r}; expected one of {', '.join(KINDS)}")
    if init == "default":
        init = {"shift": "random", "diag": "s4d_lin", "dplr": "legs", "ema": "random"}[kind]
    init, _, count = init.partition(":")          # "legs:16": Λ as 16 copies of a 16× smaller LegS (S5)
    blocks = int(count) if count else 1
    if init not in INITS:
        raise ValueError(f"unknown SSM initialisation {init!r}; expected one of {', '.join(INITS)}")
    return {name: _init_one(kind, init, name, tuple(int(d) for d in shape), generator, dt_range, blocks).to(dtype)
            for name, shape in shapes.items()}
