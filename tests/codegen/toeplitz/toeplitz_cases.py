"""Shared pieces of the Toeplitz tests (imported by path; not a test module): SSM parameters
shaped exactly as the checker makes them (seqdsl/check/builtins_mix.py), the relative
error, and the cases every test walks."""

from __future__ import annotations

import torch

from codegen.toeplitz.kernels import init_ssm_params
from seqdsl.check.builtins_mix import _ssm_shapes

# (kind, disc, mimo, conj): every discretisation of every kind the runtime accepts
KERNEL_CASES = (
    [("diag", d, False, c) for d in ("zoh", "bilinear", "dss", "none") for c in (True, False)]
    + [("diag", d, True, c) for d in ("zoh", "bilinear", "dss", "none") for c in (True, False)]
    + [("dplr", d, False, c) for d in ("zoh", "bilinear", "none") for c in (True, False)]
    + [("ema", "none", False, False), ("shift", "none", False, False)]
)

INITS = {"diag": "s4d_lin", "dplr": "legs", "ema": "random", "shift": "random"}


def case_id(case) -> str:
    kind, disc, mimo, conj = case
    return f"{kind}{'-mimo' if mimo else ''}-{disc}{'-conj' if conj else ''}"


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 (complex allowed)."""
    a = a.detach().to(torch.complex128 if a.is_complex() or b.is_complex() else torch.float64)
    b = b.detach().to(a.dtype)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def make_params(kind: str, disc: str, *, mimo: bool = False, conj: bool = True, channels: int = 6, state: int = 8,
                dtype=torch.float64, seed: int = 0, init: str | None = None) -> dict:
    """Parameters of ``ssm(kind, state, disc, mimo, conj)`` for ``channels`` channels, from the
    runtime's initialisation, then perturbed so that no entry sits on a special value."""
    shapes = {k: tuple(int(d) for d in v) for k, v in _ssm_shapes(kind, state, channels, mimo, conj, disc).items()}
    g = torch.Generator().manual_seed(seed)
    p = init_ssm_params(kind, init or INITS[kind], shapes, g, dtype=torch.float64)
    for name, t in p.items():
        if name in ("log_dt", "log_A_real", "P_re", "P_im"):
            p[name] = t + 0.1 * torch.randn(t.shape, generator=g, dtype=torch.float64)
        elif name == "A_imag":
            p[name] = t + 0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64)
        elif name in ("C_re", "C_im", "B_re", "B_im", "alpha", "delta"):
            p[name] = t + 0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64)
    if kind == "dplr":   # a milder low-rank term keeps the random perturbations stable
        p["P_re"], p["P_im"] = 0.3 * p["P_re"], 0.3 * p["P_im"]
    if "log_dt" in p:
        p["log_dt"] = p["log_dt"].clamp(-5.0, -1.0)
    return {k: v.to(dtype) for k, v in p.items()}


def leaves(params: dict) -> dict:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

