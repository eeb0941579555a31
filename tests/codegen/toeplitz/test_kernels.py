"""SSM kernel generators: every kind × discretisation equals the impulse response of the
literal recurrence; the Vandermonde product's hand-written backward; the initialisations."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the Toeplitz runtime needs torch")

sys.path.insert(0, str(Path(__file__).parent))
from toeplitz_cases import KERNEL_CASES, case_id, make_params, rel  # noqa: E402

from codegen.toeplitz import reference as R  # noqa: E402
from codegen.toeplitz.kernels import (  # noqa: E402
    discretize,
    init_ssm_params,
    legs_nplr,
    ssm_kernel,
    vandermonde,
)


def impulse_response(kind, params, n, *, disc, conj, mimo, channels):
    """K by stepping the reference recurrence on unit impulses (one per input channel)."""
    if mimo:
        u = torch.zeros(channels, n, channels, dtype=torch.float64)
        u[torch.arange(channels), 0, torch.arange(channels)] = 1
        y, _ = R.recurrence(u, kind, params, disc=disc, conj=conj, mimo=True)   # [C_in, N, C_out]
        return y.permute(1, 2, 0)                                               # [N, C_out, C_in]
    u = torch.zeros(1, n, channels, dtype=torch.float64)
    u[:, 0] = 1
    return R.recurrence(u, kind, params, disc=disc, conj=conj, mimo=False)[0][0]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
def test_kernel_equals_unrolled_recurrence(case):
    kind, disc, mimo, conj = case
    params = make_params(kind, disc, mimo=mimo, conj=conj, channels=5, state=8)
    n = 70
    K = ssm_kernel(kind, params, n, disc=disc, conj=conj, mimo=mimo)
    ref = impulse_response(kind, params, n, disc=disc, conj=conj, mimo=mimo, channels=5)
    assert K.shape == ref.shape
    assert rel(K, ref) < 1e-10, f"relative error {rel(K, ref):.2e}"


@pytest.mark.parametrize("case", [c for c in KERNEL_CASES if c[0] != "shift" and c[2] is False and c[3]],
                         ids=case_id)
def test_fp32_kernel_matches_fp64(case):
    """The fp32 kernel (long: 5000 taps) against the same kernel in fp64."""
    kind, disc, mimo, conj = case
    p64 = make_params(kind, disc, conj=conj, channels=4, state=16)
    p32 = {k: v.float() for k, v in p64.items()}
    n = 5000
    K64 = ssm_kernel(kind, p64, n, disc=disc, conj=conj)
    K32 = ssm_kernel(kind, p32, n, disc=disc, conj=conj)
    assert K32.dtype == torch.float32
    assert rel(K32, K64) < 1e-4, f"relative error {rel(K32, K64):.2e}"


def test_shift_kernel_is_the_taps():
    taps = torch.randn(3, 4, dtype=torch.float64)
    K = ssm_kernel("shift", {"C_re": taps}, 9, disc="none")
    assert torch.equal(K[:4], taps.T) and torch.equal(K[4:], torch.zeros(5, 3, dtype=torch.float64))


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("length", [1, 77, 300])
def test_vandermonde_backward_gradcheck(complex_, length):
    g = torch.Generator().manual_seed(1)
    if complex_:
        w = torch.randn(3, 4, dtype=torch.complex128, generator=g).requires_grad_()
        z = torch.complex(-0.1 * torch.rand(3, 4, dtype=torch.float64, generator=g),
                          torch.randn(3, 4, dtype=torch.float64, generator=g)).requires_grad_()
    else:
        w = torch.randn(3, 4, dtype=torch.float64, generator=g).requires_grad_()
        z = (-0.1 * torch.rand(3, 4, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, z: vandermonde(w, z, length), (w, z))


def test_vandermonde_equals_the_sum_of_powers():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 3, dtype=torch.complex128, generator=g)
    z = torch.complex(-0.01 * torch.rand(2, 3, dtype=torch.float64, generator=g),
                      torch.randn(2, 3, dtype=torch.float64, generator=g))
    n = 1000
    ref = (w[..., None] * torch.exp(z[..., None] * torch.arange(n, dtype=torch.float64))).sum(1).real
    assert rel(vandermonde(w, z, n), ref) < 1e-12


# ---- initialisations ---------------------------------------------------------------------


def init(kind, name, shape, init_name, seed=0):
    return init_ssm_params(kind, init_name, {name: shape}, torch.Generator().manual_seed(seed),
                           dtype=torch.float64)[name]


def test_s4d_inits_follow_the_paper():
    n = torch.arange(8, dtype=torch.float64)
    assert torch.allclose(init("diag", "A_imag", (3, 8), "s4d_lin"), math.pi * n.expand(3, 8))
    assert torch.allclose(init("diag", "log_A_real", (3, 8), "s4d_lin"), torch.full((3, 8), math.log(0.5), dtype=torch.float64))
    assert torch.allclose(init("diag", "log_A_real", (3, 8), "s4d_real"), torch.log(n + 1).expand(3, 8))
    assert torch.equal(init("diag", "A_imag", (3, 8), "s4d_real"), torch.zeros(3, 8, dtype=torch.float64))
    S = 16
    assert torch.allclose(init("diag", "A_imag", (2, 8), "s4d_inv"), (S / math.pi * (S / (2 * n + 1) - 1)).expand(2, 8))


def test_log_dt_is_log_uniform_between_1e3_and_1e1():
    dt = init("diag", "log_dt", (4096,), "s4d_lin").exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert abs(float(dt.log().mean()) - math.log(1e-2)) < 0.05


def test_legs_is_hippo_legs_in_a_unitary_basis():
    """Λ − P P* over the conjugate-extended modes has HiPPO-LegS's spectrum −1, −2, …, −S,
    and the basis-free invariants Bᵀ Aᵏ B agree with the LegS matrices."""
    half = 8
    S = 2 * half
    lam, P, B = legs_nplr(half)
    lam_f, P_f, B_f = (torch.cat([x, x.conj()]) for x in (lam, P, B))
    A_f = torch.diag(lam_f) - torch.outer(P_f, P_f.conj())
    ev = torch.sort(torch.linalg.eigvals(A_f).real).values
    # (LegS is far from normal: its eigenvalues are ill-conditioned, hence the loose tolerance)
    assert torch.allclose(ev, -torch.arange(S, 0, -1, dtype=torch.float64), atol=1e-3)
    q = torch.arange(S, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    A = -(torch.tril(r[:, None] * r[None, :], -1) + torch.diag(q + 1))
    for k in range(4):
        mine = (B_f.conj() @ torch.linalg.matrix_power(A_f, k) @ B_f).real
        theirs = r @ torch.linalg.matrix_power(A, k) @ r
        assert torch.allclose(mine, theirs, rtol=1e-9), k
    # the parameters the runtime initialises are these, per name and shape
    assert torch.allclose(init("dplr", "A_imag", (3, half), "legs"), lam.imag.expand(3, half))
    assert torch.allclose(init("dplr", "P_re", (half,), "legs"), P.real)
    assert torch.allclose(init("dplr", "B_im", (3, half), "legs"), B.imag.expand(3, half))
    assert torch.allclose(init("diag", "A_imag", (3, half), "dss"), lam.imag.expand(3, half))


def test_dlr_eigenvalues_sit_on_a_ring_inside_the_unit_circle():
    half = 16
    p = init_ssm_params("diag", "dlr", {"log_A_real": (4, half), "A_imag": (4, half)}, torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    lam = torch.exp(torch.complex(-p["log_A_real"].exp(), p["A_imag"]))      # disc = none: λ = exp(A)
    assert (lam.abs() < 1).all() and (lam.abs() > math.exp(-0.5 * 0.1) - 1e-12).all()
    assert torch.allclose(p["A_imag"][0], 2 * math.pi * torch.arange(half, dtype=torch.float64) / half)


def test_ema_init_follows_mega():
    beta = init("ema", "beta", (64, 4), "random")
    assert torch.allclose(beta, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).expand(64, 4), atol=0.15)
    alpha = init("ema", "alpha", (256, 16), "random")
    assert abs(float(alpha.std()) - 0.2) < 0.02


def test_init_is_a_function_of_name_and_shape():
    """The backend creates the weights one at a time: deterministic parts agree across calls."""
    one = init_ssm_params("dplr", "legs", {"A_imag": (2, 4), "P_re": (4,)}, torch.Generator().manual_seed(0))
    other = init_ssm_params("dplr", "legs", {"P_re": (4,)}, torch.Generator().manual_seed(5))
    assert torch.equal(one["P_re"], other["P_re"]) and one["P_re"].dtype == torch.float32


@pytest.mark.parametrize("case", [c for c in KERNEL_CASES if c[3] or c[0] in ("ema", "shift")], ids=case_id)
def test_default_inits_give_stable_kernels(case):
    """Each kind with its checker-default initialisation gives a finite kernel that decays."""
    kind, disc, mimo, conj = case
    from seqdsl.check.builtins_mix import _ssm_shapes

    shapes = {k: tuple(int(d) for d in v) for k, v in _ssm_shapes(kind, 16, 4, mimo, conj, disc).items()}
    init_name = {"diag": "dlr" if disc == "none" else "s4d_lin", "dplr": "legs"}.get(kind, "random")
    p = init_ssm_params(kind, init_name, shapes, torch.Generator().manual_seed(0))
    K = ssm_kernel(kind, p, 20000, disc=disc, conj=conj, mimo=mimo)
    assert torch.isfinite(K).all()
    assert K[-100:].abs().max() < K[:100].abs().max()


def test_errors_name_what_is_missing_or_wrong():
    with pytest.raises(ValueError, match="needs the parameter 'log_dt'"):
        discretize("diag", {k: torch.zeros(2, 2) for k in ("log_A_real", "A_imag", "C_re", "C_im")}, disc="zoh")
    with pytest.raises(ValueError, match="DPLR kernel takes zoh, bilinear or none"):
        discretize("dplr", make_params("dplr", "zoh"), disc="dss")
    with pytest.raises(ValueError, match="unknown SSM kind"):
        discretize("conv", {}, disc="zoh")
    with pytest.raises(ValueError, match="no MIMO form"):
        discretize("ema", make_params("ema", "none"), disc="none", mimo=True)
    with pytest.raises(ValueError, match="unknown SSM initialisation"):
        init_ssm_params("diag", "hippo", {"A_imag": (2, 2)})
