"""The published mixers of this family in the linear_attention form, against references written
from their papers' formulas: Mamba's selective scan, RetNet's retention, GLA. Gates from 0.1×
to 10× their usual scale, and down to log a = −20 per step (no overflow, no NaN)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")
F = torch.nn.functional

from codegen.linear.reference import (  # noqa: E402
    gla_ref,
    linear_attention_ref,
    retention_gammas,
    retention_ref,
    selective_scan_ref,
)
from codegen.linear.torch_impl import ALGORITHMS, linear_attention, selective_scan  # noqa: E402


def _scan_inputs(b=2, dm=6, s=5, n=67, dt_shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {"u": randn(b, dm, n), "delta": randn(b, dm, n) + dt_shift, "A": -torch.exp(0.5 * randn(dm, s)),
            "B": randn(b, s, n), "C": randn(b, s, n), "D": randn(dm), "initial_state": 0.3 * randn(b, dm, s)}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(("softplus", "chunk", "dt_shift"), [(True, 16, 0.0), (False, 64, 0.0), (True, 50, 3.0)],
                         ids=["softplus-C16", "raw-C64", "softplus-C50-large-steps"])
def test_selective_scan_equals_mambas_formula(algorithm, softplus, chunk, dt_shift, close):
    x = _scan_inputs(dt_shift=dt_shift)
    if not softplus:
        x["delta"] = x["delta"].abs()                          # Δ > 0 without the softplus

    def fn(**y):
        return selective_scan(**y, delta_softplus=softplus, algorithm=algorithm, chunk=chunk, return_state=True)

    def ref(**y):
        return selective_scan_ref(**y, delta_softplus=softplus, return_state=True)

    close(fn, ref, x)


def test_the_two_references_agree_on_the_selective_scan(relerr):
    """linear_attention_ref with q = C, k = B, v = Δu and the log-gate Δ ⊗ A is Mamba's scan."""
    x = _scan_inputs()
    dt = F.softplus(x["delta"])
    y = linear_attention_ref(x["C"].transpose(-1, -2)[:, None], x["B"].transpose(-1, -2)[:, None],
                             (dt * x["u"])[..., None], decay=dt[..., None] * x["A"][:, None, :], log_decay=True,
                             initial_state=x["initial_state"][..., None])
    y = y[..., 0] + x["D"][:, None] * x["u"]
    ref = selective_scan_ref(**x, delta_softplus=True)
    assert relerr(y, ref) < 1e-12


def test_selective_scan_carries_its_state(relerr):
    x = {k: v.float() for k, v in _scan_inputs(n=90).items()}
    whole, h = selective_scan(**x, delta_softplus=True, return_state=True)
    parts, state = [], x["initial_state"]
    for a, b in ((0, 33), (33, 34), (34, 90)):
        part = {k: x[k][..., a:b] for k in ("u", "delta", "B", "C")}
        y, state = selective_scan(**part, A=x["A"], D=x["D"], delta_softplus=True, initial_state=state,
                                  return_state=True)
        parts.append(y)
    assert relerr(torch.cat(parts, -1), whole) < 1e-5 and relerr(state, h) < 1e-5


def _qkv(b, h, n, dk, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(b, h, n, dk, generator=g, dtype=torch.float64),
            "k": torch.randn(b, h, n, dk, generator=g, dtype=torch.float64),
            "v": torch.randn(b, h, n, dv, generator=g, dtype=torch.float64)}


def test_retention_reference_is_the_parallel_form(relerr):
    """RetNet's parallel form (Sun et al. 2023, eq. 5): (QKᵀ ⊙ D) V with D_nm = γ^{n−m}, n ≥ m."""
    x = _qkv(2, 4, 29, 8, 8)
    n, dh = 29, 8
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    gamma = retention_gammas(4)[:, None, None]
    d = torch.where(j <= i, gamma ** (i - j).double(), torch.zeros((), dtype=torch.float64))
    parallel = ((x["q"] @ x["k"].transpose(-1, -2)) * dh ** -0.5 * d) @ x["v"]
    assert relerr(retention_ref(**x), parallel) < 1e-12


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("n", [63, 257])
def test_retention_equals_retnet(algorithm, n, close):
    x = _qkv(2, 4, n, 60, 60)
    gamma = retention_gammas(4, torch.float32)

    def fn(q, k, v):
        return linear_attention(q, k, v, decay=gamma.to(q.dtype), scale=q.shape[-1] ** -0.5, algorithm=algorithm,
                                chunk=50)

    close(fn, retention_ref, x)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("gate_scale", [0.1, 1.0, 10.0])
def test_gla_equals_the_gated_recurrence(algorithm, gate_scale, close):
    x = _qkv(2, 2, 63, 60, 36, seed=1)
    g = torch.Generator().manual_seed(2)
    # GLA's gate: log α = logsigmoid(·)/τ (τ = 16 in the paper); here τ = 1 times 0.1 … 10
    x["g"] = F.logsigmoid(torch.randn(2, 2, 63, 60, generator=g, dtype=torch.float64)) * gate_scale

    def fn(q, k, v, g):
        return linear_attention(q, k, v, decay=g, log_decay=True, scale=q.shape[-1] ** -0.5, algorithm=algorithm,
                                chunk=16)

    close(fn, gla_ref, x)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_gates_of_minus_twenty_per_step_stay_finite_and_exact(algorithm, kind, close):
    """log a = −20 every step: e^{G} spans e^{−20·C} inside a chunk. Nothing may overflow."""
    x = _qkv(1, 2, 130, 16, 16, seed=3)
    shape = (1, 2, 130) if kind == "token" else (1, 2, 130, 16)
    x["decay"] = torch.full(shape, -20.0, dtype=torch.float64)
    x["decay"][..., 5:9, ...] = -0.01                          # a few slow steps in between

    def fn(**y):
        return linear_attention(**y, log_decay=True, algorithm=algorithm, chunk=64, return_state=True)

    def ref(**y):
        return linear_attention_ref(**y, log_decay=True, return_state=True)

    close(fn, ref, x)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["token", "channel"])
def test_resets_followed_by_slow_decay_keep_their_precision(algorithm, kind, close):
    """Big drops (log a = −500, a reset) every 7 steps between slow steps (−0.05): inside a
    chunk the cumulative gate reaches −5000, where fp32 has a spacing of 5e-4, yet the decays
    between the slow steps that follow must stay exact."""
    x = _qkv(1, 2, 130, 16, 16, seed=4)
    shape = (1, 2, 130) if kind == "token" else (1, 2, 130, 16)
    x["decay"] = torch.full(shape, -0.05, dtype=torch.float64)
    if kind == "token":
        x["decay"][..., 3::7] = -500.0
    else:
        x["decay"][..., 3::7, :] = -500.0

    def fn(**y):
        return linear_attention(**y, log_decay=True, algorithm=algorithm, chunk=64, return_state=True)

    def ref(**y):
        return linear_attention_ref(**y, log_decay=True, return_state=True)

    close(fn, ref, x, tol=1e-5)                                # tighter than usual: this is about precision
