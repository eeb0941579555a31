"""``fixed_point(..., jac_loss = γ, jac_freq = p)``: Jacobian regularisation of an equilibrium
layer (Bai, Koltun & Kolter 2021, "Stabilizing Equilibrium Models by Jacobian Regularization";
released as locuslab/deq ``--jac_loss_weight`` / ``--jac_loss_freq``, lib/jacobian.py).

Written out from the paper: at the fixed point z* with J = ∂f/∂z*, the regulariser is
‖J‖_F² / d (d = numel z*), estimated by Hutchinson with one draw ε ~ N(0, I):
    ‖J‖_F² = E_ε ‖εᵀ J‖²,   the loss γ · ‖εᵀ J‖² / d,
added on a share p of the training steps, to ``model.aux_loss()``; its gradient is that of
the vector–Jacobian product (double backward).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402
from codegen.torch import equilibrium  # noqa: E402

CELL = """
dim B = 2, N = 5, D = 6
block cell(z: [B, N, D], x: [B, N, D]) -> [B, N, D] {
  h = tanh(linear(z, D, init = normal(0.3)) + x)
  return h + 0.5 * tanh(linear(h, D, bias = false, init = normal(0.3)))
}
model deq(x: [B, N, D]) -> [B, N, D] {
  param z0: [D] = zeros(trainable = false)
  return fixed_point(cell, expand(z0, [B, N, D]), x, iters = 80, tol = 0.000001, solver = broyden ARGS)
}
"""


def _model(args: str = ""):
    return seqdsl.load(CELL.replace("ARGS", args)).double()


def _x():
    return torch.randn(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _dense_jacobian(m, x):
    """J = ∂f/∂z at the module's z* (float64, dense [d, d])."""
    cell = m.module_at("fixed_point.cell")
    calls = []
    hook = cell.register_forward_hook(lambda mod, args, out: calls.append(args[0]) if torch.is_grad_enabled() else None)
    m(x)
    hook.remove()
    z = calls[-1].detach()
    d = z.numel()
    return z, torch.autograd.functional.jacobian(lambda t: cell(t, x), z).reshape(d, d)


def test_the_loss_is_gamma_times_the_hutchinson_estimate_at_the_fixed_point():
    m = _model(", jac_loss = 0.7").train()
    x = _x()
    z, J = _dense_jacobian(m, x)
    d = z.numel()
    torch.manual_seed(5)
    m(x)                                              # the training forward draws ε from torch's generator
    cell = m.module_at("fixed_point.cell")
    assert cell.residual < 1e-6
    torch.manual_seed(5)
    eps = torch.randn_like(z).reshape(d)              # the same draw, by hand
    expected = float((eps @ J).pow(2).sum() / d)
    assert cell.jacobian == pytest.approx(expected, rel=1e-9)
    assert float(m.aux_loss().detach()) == pytest.approx(0.7 * expected, rel=1e-9)
    # and its expectation is the Frobenius norm per element
    draws = []
    for s in range(300):
        torch.manual_seed(100 + s)
        m(x)
        draws.append(cell.jacobian)
    frob = float(J.pow(2).sum() / d)
    mean = sum(draws) / len(draws)
    assert abs(mean - frob) < 0.1 * frob, (mean, frob)


def test_its_gradient_is_the_derivative_of_the_estimate_at_fixed_z_star():
    """d(aux)/dθ by the module (double backward) equals a central finite difference of
    γ‖εᵀ ∂f(z*, x; θ)/∂z‖²/d in θ at fixed ε and fixed z* (float64) — z* enters as a constant,
    as in the release (its z* is a leaf)."""
    m = _model(", jac_loss = 0.7").train()
    x = _x()
    cell = m.module_at("fixed_point.cell")
    z, _ = _dense_jacobian(m, x)
    w = dict(m.named_parameters())["fixed_point.cell.linear.weight"]
    torch.manual_seed(3)
    m(x)
    (g,) = torch.autograd.grad(m.aux_loss(), [w])

    def estimate() -> float:
        zz = z.clone().requires_grad_(True)
        torch.manual_seed(3)
        return 0.7 * equilibrium.jacobian_loss(cell(zz, x), zz).item()

    direction = torch.randn(w.shape, dtype=w.dtype, generator=torch.Generator().manual_seed(2))
    h = 1e-6
    with torch.no_grad():
        w += h * direction
    up = estimate()
    with torch.no_grad():
        w -= 2 * h * direction
    down = estimate()
    with torch.no_grad():
        w += h * direction
    fd = (up - down) / (2 * h)
    analytic = float((g * direction).sum())
    assert abs(fd) > 1e-4 and abs(analytic - fd) < 1e-6 * max(1.0, abs(fd)), (analytic, fd)


def test_share_of_steps_and_only_while_training():
    m = _model(", jac_loss = 0.5, jac_freq = 0.3").train()
    x = _x()
    cell = m.module_at("fixed_point.cell")
    torch.manual_seed(0)
    hits = 0
    for _ in range(200):
        m(x)
        hits += float(m.aux_loss().detach()) > 0
    assert 40 <= hits <= 80                          # Binomial(200, 0.3): mean 60, sd 6.5
    m.eval()
    m(x)
    assert float(m.aux_loss()) == 0.0                # not in evaluation
    m.train()
    with torch.no_grad():
        m(x)
    assert float(m.aux_loss()) == 0.0                # not without gradients
    m.fixed_points("unrolled", 3)
    m(x)
    assert float(m.aux_loss().detach()) == 0.0                # not in the unrolled pretraining (as the release)
    assert hasattr(cell, "jacobian")


def test_the_analysis_counts_the_regulariser_in_training_only():
    base = CELL.replace("ARGS", "")
    reg = CELL.replace("ARGS", ", jac_loss = 0.5, jac_freq = 0.25")
    fwd = [seqdsl.analyze(s).total.flops for s in (base, reg)]
    assert fwd[0] == fwd[1]
    a, b = (seqdsl.analyze(s, backward=True) for s in (base, reg))
    row = next(r for r in seqdsl.analyze(base).layers if r.op == "fixed_point")
    per_application = row.estimates.flops / 80        # the forward counts iters = 80 applications
    assert b.total.flops - a.total.flops == 6 * per_application / 4     # 6 applications' worth, on 1/4 of steps


def test_a_negative_weight_or_a_share_outside_0_1_is_refused_with_its_position():
    for args, words in ((", jac_loss = -1", "jac_loss is a loss weight"), (", jac_loss = 1, jac_freq = 2", "jac_freq"),
                        (", jac_loss = 1, jac_freq = 0", "jac_freq")):
        with pytest.raises(seqdsl.SeqError) as e:
            seqdsl.check(CELL.replace("ARGS", args))
        assert words in str(e.value) and ":9:" in str(e.value)
