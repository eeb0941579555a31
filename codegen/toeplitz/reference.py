"""Plain references for the Toeplitz family: the literal recurrence and the literal
Toeplitz product. Loops allowed, obviously right, meant for float64 in tests.

The recurrence is written from the parameters independently of ``kernels.py``: each kind
becomes a dense real-output system (Ā, B̄, C) per channel — conjugate pairs materialised,
so no "2·Re" shortcut — discretised with the dense formulas, then stepped one token at a
time. Parameter conventions: A = −exp(log_A_real) + i·A_imag, Δ = exp(log_dt).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _c(params: dict[str, Tensor], name: str) -> Tensor:
    return torch.complex(params[name + "_re"], params[name + "_im"])


def _pairs(x: Tensor, conj: bool) -> Tensor:
    """The conjugate-extended vector (x, x̄) along the last axis (the real system's modes)."""
    return torch.cat([x, x.conj()], dim=-1) if conj else x


def dense_system(kind: str, params: dict[str, Tensor], *, disc: str, conj: bool = True, mimo: bool = False,
                 length: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(Ā, B̄, C) of the SSM as dense matrices. Per channel: Ā [C, S, S], B̄ [C, S], C [C, S];
    MIMO: Ā [S, S], B̄ [S, C_in], C [C_out, S]. y_t = Re(C h_t)."""
    if kind == "shift":
        taps = params["C_re"]                                          # [C, S]
        n_ch, S = taps.shape
        shift = torch.diag(torch.ones(S - 1, dtype=taps.dtype), -1)    # h_t = (u_t, h_{t−1}[:-1])
        B = torch.zeros(n_ch, S, dtype=taps.dtype)
        B[:, 0] = 1
        return shift.expand(n_ch, S, S), B, taps
    if kind == "ema":
        alpha, delta = torch.sigmoid(params["alpha"]), torch.sigmoid(params["delta"])
        return torch.diag_embed(1 - alpha * delta), alpha * params["beta"], params["C_re"]
    re = params["A_real"] if "A_real" in params else -torch.exp(params["log_A_real"])   # DSS: Re A free
    C = _pairs(_c(params, "C"), conj)
    n_ch = C.shape[0]

    def rows(x: Tensor) -> Tensor:   # a parameter of G channel groups: channel c reads row c mod G
        return x if mimo or x.dim() == 1 or x.shape[0] == n_ch else x[torch.arange(n_ch) % x.shape[0]]

    lam = _pairs(rows(torch.complex(re, params["A_imag"])), conj)
    if kind == "dplr":
        P = _pairs(_c(params, "P"), conj)
        P = P.expand(n_ch, -1) if P.dim() == 1 else rows(P)
        A = torch.diag_embed(lam) - P[:, :, None] * P.conj()[:, None, :]   # Λ − P P* per channel
        B = _pairs(rows(_c(params, "B")), conj)
    elif mimo:
        A = torch.diag(lam)
        B = _pairs(_c(params, "B").transpose(0, 1), conj).transpose(0, 1)   # [S, C_in]
    else:
        A = torch.diag_embed(lam)
        B = torch.ones_like(lam)
    S = A.shape[-1]
    eye = torch.eye(S, dtype=A.dtype)
    if disc == "none":
        return torch.linalg.matrix_exp(A), B, C
    dt = _pairs(torch.exp(params["log_dt"]).to(A.dtype), conj) if mimo else torch.exp(params["log_dt"]).to(A.dtype)
    if mimo:
        dA = dt[:, None] * A                      # Δ per state: Δ·A row-scaled
        Bm = dt[:, None] * B
    elif dt.dim() == 2:                           # DSS: Δ_re·Re A + i·Δ_im·Im A (diagonal A)
        d = torch.diagonal(A, dim1=-2, dim2=-1)
        dA = torch.diag_embed(torch.complex(dt[:, :1].real * d.real, dt[:, 1:].real * d.imag))
        Bm = None
    else:
        dA = dt[:, None, None] * A
        Bm = dt[:, None] * B
    if disc == "zoh":
        Abar = torch.linalg.matrix_exp(dA)
        if Bm is None:    # separate Δ: B̄ = A⁻¹(Ā − I)B
            return Abar, _solve(A, _mv(Abar - eye, B, mimo), mimo), C
        return Abar, _solve(dA, _mv(Abar - eye, Bm, mimo), mimo), C
    if disc == "bilinear" and Bm is None:
        raise ValueError("the bilinear discretisation needs one Δ per channel")
    if disc == "bilinear":
        back = eye - dA / 2
        return torch.linalg.solve(back, eye + dA / 2), _solve(back, Bm, mimo), C
    if disc == "dss":   # diagonal only: per mode, B̄ = (e^{ΔA} − 1)/(A (e^{ΔA·L} − 1))
        lam_dt = torch.diagonal(dA, dim1=-2, dim2=-1)
        lam_A = torch.diagonal(A, dim1=-2, dim2=-1)
        factor = (torch.exp(lam_dt) - 1) / (lam_A * (torch.exp(lam_dt * length) - 1))
        Bd = factor[:, None] * B if mimo else factor * B
        return torch.diag_embed(torch.exp(lam_dt)), Bd, C
    raise ValueError(disc)


def _mv(M: Tensor, x: Tensor, mimo: bool) -> Tensor:
    return M @ x if mimo else (M @ x[..., None])[..., 0]


def _solve(M: Tensor, x: Tensor, mimo: bool) -> Tensor:
    return torch.linalg.solve(M, x) if mimo else torch.linalg.solve(M, x[..., None])[..., 0]


def recurrence(u: Tensor, kind: str, params: dict[str, Tensor], *, disc: str, conj: bool = True, mimo: bool = False,
               initial_state: Tensor | None = None, length: int | None = None) -> tuple[Tensor, Tensor]:
    """y_t = Re(C h_t), h_t = Ā h_{t−1} + B̄ u_t, one token at a time.

    u [B, N, C] → (y [B, N, C_out], final state). The state is that of the dense system:
    [B, C, S] per channel, [B, S] for MIMO (complex; conjugate pairs materialised).
    ``length`` is DSS's normalisation length (default N)."""
    n = u.shape[1]
    A, B, C = dense_system(kind, params, disc=disc, conj=conj, mimo=mimo, length=length or n)
    cd = torch.promote_types(A.dtype, torch.complex64 if u.dtype == torch.float32 else torch.complex128)
    A, B, C = A.to(cd), B.to(cd), C.to(cd)
    if mimo:
        h = torch.zeros(u.shape[0], A.shape[-1], dtype=cd) if initial_state is None else initial_state.to(cd)
    else:
        h = torch.zeros(u.shape[0], *B.shape, dtype=cd) if initial_state is None else initial_state.to(cd)
    ys = []
    for t in range(n):
        ut = u[:, t].to(cd)
        if mimo:
            h = h @ A.transpose(0, 1) + ut @ B.transpose(0, 1)        # read S², write S
            ys.append((h @ C.transpose(0, 1)).real)
        else:
            h = torch.einsum("cst,bct->bcs", A, h) + B * ut[..., None]  # read C·S², write C·S
            ys.append(torch.einsum("cs,bcs->bc", C, h).real)
    return torch.stack(ys, dim=1), h


def toeplitz_matrix(K: Tensor, n: int) -> Tensor:
    """T[i, j] = K[i − j] for j ≤ i (0 elsewhere): [n, n, *K.shape[1:]]."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    d = i - j
    ok = (d >= 0) & (d < K.shape[0])
    T = K[d.clamp(0, K.shape[0] - 1)]
    return T * ok.reshape(n, n, *([1] * (K.dim() - 1))).to(K.dtype)


def direct_conv(u: Tensor, K: Tensor, *, K_rev: Tensor | None = None) -> Tensor:
    """y_i = Σ_{j≤i} K[i−j] u_j (+ Σ_{j>i} K_rev[j−i] u_j when K_rev is given).

    u [B, N, C]; K [L, C] (one filter per channel) or [L, C_out, C_in] (MIMO)."""
    n = u.shape[1]
    M = toeplitz_matrix(K, n)                                          # read L, write N²·C
    if K_rev is not None:
        R = toeplitz_matrix(K_rev, n)
        R[torch.arange(n), torch.arange(n)] = 0                        # the diagonal belongs to K
        M = M + R.transpose(0, 1)
    if K.dim() == 2:
        return torch.einsum("ijc,bjc->bic", M, u)                      # N²·C multiply-adds
    return torch.einsum("ijoc,bjc->bio", M, u)
