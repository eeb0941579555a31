"""Deep-equilibrium layers: root finding for z* = f(z*, x) and its implicit gradient.

What ``fixed_point(cell, z, x, iters, tol, solver)`` of a .seq file runs (Bai, Kolter &
Koltun 2019, "Deep Equilibrium Models"; the solvers follow the facts of locuslab/deq,
``lib/solvers.py``):

- **residual**: ‖f(z) − z‖ / (‖f(z)‖ + 1e-9) over the whole batch (locuslab/deq's "rel" stop
  mode); a solver stops as soon as it is below ``tol``, after at most ``iters`` applications
  of f (the initial ones included), and returns the iterate with the lowest residual seen.
- **anderson**: Anderson acceleration with memory m = 6, regularisation λ = 1e-4 and mixing
  β = 1 (locuslab/deq's defaults), one least-squares solve per batch element: minimise
  ‖Σ_i α_i G_i‖² + λ‖α‖² subject to Σ α_i = 1, where G_i = f(X_i) − X_i over the last m
  iterates; the next iterate is β Σ α_i f(X_i) + (1 − β) Σ α_i X_i. The small system is formed
  and solved in float64 whatever the dtype of z (see ``anderson``).
- **broyden**: Broyden's "good" method on g(z) = f(z) − z, starting from the inverse Jacobian
  −I, with a rank-one update per step kept in low-rank form (memory: every step, as the
  reference keeps ``threshold`` of them), no line search (the reference's default ``ls=False``).
- **picard**: z ← f(z).

**Backward** (implicit differentiation, the paper's Theorem 1): with J = ∂f/∂z at z*, the
gradient of the loss through z* is uᵀ ∂f/∂(θ, x) where u solves the adjoint fixed point
uᵀ = gᵀ + uᵀJ; u is found by the *same* solver on h(u) = Jᵀu + g from u = 0, each application
of h one vector–Jacobian product through one application of f at z* (no iterate is stored).
``backward_solver`` / ``backward_iters`` choose another solver and budget for it (the release
solves the forward with Anderson and the backward with Broyden, ``--b_solver``/``--b_thres``).

**Unrolled mode** (``set_mode(model, "unrolled", applications)``, or ``model.fixed_points(...)``
on a generated module): every fixed_point cell under ``model`` instead runs exactly
``applications`` (default: its ``iters``) applications of f from the initial z, with plain
autograd through them — no solver, no implicit backward. This is how the released DEQ is
pretrained before the solve is switched on (locuslab/deq DEQ-Sequence ``--pretrain_steps``:
a weight-tied stack of ``--n_layer`` applications from z = 0, plain backprop); ``seqdsl train
--pretrain-steps K`` runs its first K steps so. ``trace`` then holds the residual of each
application's input, ``residual`` the last.

**Jacobian regularisation** (``fixed_point(..., jac_loss = γ, jac_freq = p)``; Bai, Koltun &
Kolter 2021, "Stabilizing Equilibrium Models by Jacobian Regularization", released as
locuslab/deq ``--jac_loss_weight`` / ``--jac_loss_freq``): on a share p of the training forwards
(drawn from torch's generator), γ·‖εᵀJ‖²/numel(z) at z* — Hutchinson's estimate of the squared
Frobenius norm of J per element, one ε ~ N(0, I) — is left for ``model.aux_loss()``. Its
gradient reaches the weights through the vector–Jacobian product (double backward), not
through the implicit correction. As in the release, the unrolled mode adds none.

After a forward, the cell module carries ``residual``, ``steps``, ``tol`` and ``trace`` (the residual
after each application of f) of the forward solve and,
after a backward, ``backward_residual`` and ``backward_steps``. A residual above ``tol``
issues a :class:`EquilibriumWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

Fn = Callable[[torch.Tensor], torch.Tensor]

ANDERSON_MEMORY = 6      # locuslab/deq anderson(m=6)
ANDERSON_LAMBDA = 1e-4   # anderson(lam=1e-4)
ANDERSON_BETA = 1.0      # anderson(beta=1.0)


class EquilibriumWarning(UserWarning):
    """A fixed-point solve ended above its tolerance."""


def _residual(fz: torch.Tensor, z: torch.Tensor) -> float:
    return float((fz - z).detach().norm() / (fz.detach().norm() + 1e-9))


class _Best:
    """The iterate with the lowest residual seen so far (what every solver returns)."""

    def __init__(self) -> None:
        self.z: torch.Tensor | None = None
        self.residual = float("inf")
        self.steps = 0
        self.trace: list[float] = []        # the residual after each application of f, in order

    def see(self, z: torch.Tensor, fz: torch.Tensor, steps: int) -> float:
        r = _residual(fz, z)
        self.trace.append(r)
        if r < self.residual or self.z is None:
            self.z, self.residual, self.steps = z, r, steps
        return r


def picard(f: Fn, z0: torch.Tensor, iters: int, tol: float) -> _Best:
    """z ← f(z) until the residual is below ``tol`` (at most ``iters`` applications)."""
    best, z = _Best(), z0
    for step in range(1, iters + 1):
        fz = f(z)
        if best.see(z, fz, step) < tol:
            break
        z = fz
    return best


def anderson(f: Fn, z0: torch.Tensor, iters: int, tol: float, m: int = ANDERSON_MEMORY,
             lam: float = ANDERSON_LAMBDA, beta: float = ANDERSON_BETA) -> _Best:
    """Anderson acceleration (type II), one set of mixing weights per batch element."""
    bsz = z0.shape[0]
    shape = z0.shape
    X = z0.new_zeros(bsz, m, z0[0].numel())   # past iterates
    F = torch.zeros_like(X)                   # f of each
    best = _Best()
    X[:, 0] = z0.reshape(bsz, -1)
    F[:, 0] = f(z0).reshape(bsz, -1)
    if best.see(X[:, 0].clone().reshape(shape), F[:, 0].reshape(shape), 1) < tol or iters < 2:
        return best
    X[:, 1] = F[:, 0]
    F[:, 1] = f(F[:, 0].reshape(shape)).reshape(bsz, -1)
    if best.see(X[:, 1].clone().reshape(shape), F[:, 1].reshape(shape), 2) < tol:
        return best
    for k in range(2, iters):
        n = min(k, m)
        # The constrained least squares min ‖Σ α_i G_i‖² + λ‖α‖², Σ α_i = 1 has the solution
        # α = w / Σ w with (GGᵀ + λI) w = 1 (its KKT system, the bordered one of locuslab/deq,
        # eliminated). Formed and solved in float64: ‖G_i‖² grows with the elements per sample
        # (~1e5 at the example's D = 700, N = 150) while the weights hang on the *differences*
        # between nearly equal G_i. In float32 the bordered system (condition growing like ‖G‖⁴,
        # ~1e10 there) lost the constraint Σ α = 1 and gave α ≈ 0: the iterate went back to 0 and
        # the residual stayed at 1.0 (measured with scripts/deq_convergence.py).
        G = (F[:, :n] - X[:, :n]).double()
        GG = G @ G.transpose(1, 2) + lam * torch.eye(n, dtype=torch.float64, device=z0.device)
        w = torch.linalg.solve(GG, GG.new_ones(bsz, n, 1))[..., 0]                  # [bsz, n]
        alpha = (w / w.sum(-1, keepdim=True)).to(z0.dtype)
        i = k % m
        X[:, i] = beta * (alpha[:, None] @ F[:, :n])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :n])[:, 0]
        F[:, i] = f(X[:, i].reshape(shape)).reshape(bsz, -1)
        if best.see(X[:, i].clone().reshape(shape), F[:, i].reshape(shape), k + 1) < tol:
            break
    return best


def broyden(f: Fn, z0: torch.Tensor, iters: int, tol: float) -> _Best:
    """Broyden's good method on g(z) = f(z) − z, per batch element, inverse Jacobian
    approximated as −I + Σ u_i v_iᵀ (rank one per step), full step (no line search)."""
    bsz = z0.shape[0]
    shape = z0.shape

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(bsz, -1)

    z = flat(z0)
    fz = flat(f(z0))
    gz = fz - z
    best = _Best()
    if best.see(z.reshape(shape), fz.reshape(shape), 1) < tol:
        return best
    Us = z.new_zeros(bsz, iters, z.shape[1])   # u_i
    Vs = z.new_zeros(bsz, iters, z.shape[1])   # v_i
    count = 0

    def inv_jac(x: torch.Tensor) -> torch.Tensor:            # (−I + U Vᵀ) x
        if count == 0:
            return -x
        return -x + torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", Vs[:, :count], x), Us[:, :count])

    def inv_jac_t(x: torch.Tensor) -> torch.Tensor:          # xᵀ (−I + U Vᵀ)
        if count == 0:
            return -x
        return -x + torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", Us[:, :count], x), Vs[:, :count])

    update = -inv_jac(gz)
    for step in range(2, iters + 1):
        z_new = z + update
        fz_new = flat(f(z_new.reshape(shape)))
        g_new = fz_new - z_new
        if best.see(z_new.reshape(shape), fz_new.reshape(shape), step) < tol:
            break
        dz, dg = z_new - z, g_new - gz
        z, gz = z_new, g_new
        # good Broyden: J⁻¹ ← J⁻¹ + (Δz − J⁻¹Δg)(Δzᵀ J⁻¹) / (Δzᵀ J⁻¹ Δg)
        vT = inv_jac_t(dz)
        denom = (vT * dg).sum(-1, keepdim=True)
        u = (dz - inv_jac(dg)) / torch.where(denom == 0, torch.ones_like(denom), denom)
        Vs[:, count] = torch.nan_to_num(vT)
        Us[:, count] = torch.nan_to_num(u)
        count += 1
        update = -inv_jac(gz)
    return best


SOLVERS: dict[str, Callable[[Fn, torch.Tensor, int, float], _Best]] = {
    "anderson": anderson, "broyden": broyden, "picard": picard,
}


def solve(f: Fn, z0: torch.Tensor, iters: int, tol: float, solver: str) -> _Best:
    """The root of f(z) − z from z0 with the named solver (see the module docstring)."""
    try:
        fn = SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown fixed-point solver {solver!r}; one of {', '.join(SOLVERS)}") from None
    return fn(f, z0, iters, tol)


class _ImplicitBackward(torch.autograd.Function):
    """Identity forward on f(z*); its backward turns the incoming gradient g into the
    solution u of u = g + Jᵀu (J = ∂f/∂z at z*), which autograd then sends on through
    f(z*) to the weights and to x."""

    @staticmethod
    def forward(ctx, fz: torch.Tensor, z: torch.Tensor, cell: nn.Module, iters: int, tol: float,
                solver: str) -> torch.Tensor:
        ctx.fz, ctx.z = fz, z
        ctx.cell, ctx.iters, ctx.tol, ctx.solver = cell, iters, tol, solver
        return fz.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        fz, z = ctx.fz, ctx.z

        def h(u: torch.Tensor) -> torch.Tensor:                  # Jᵀu + g: one VJP through f at z*
            (vjp,) = torch.autograd.grad(fz, z, u, retain_graph=True)
            return vjp + g

        with torch.enable_grad():
            best = solve(h, torch.zeros_like(g), ctx.iters, ctx.tol, ctx.solver)
        ctx.cell.backward_residual, ctx.cell.backward_steps = best.residual, best.steps
        if best.residual > ctx.tol:
            warnings.warn(f"fixed_point backward ({ctx.solver}): adjoint residual {best.residual:.3g} is above "
                          f"tol = {ctx.tol:g} after {best.steps} steps", EquilibriumWarning, stacklevel=2)
        ctx.fz = ctx.z = ctx.cell = None
        return best.z, None, None, None, None, None


MODES = ("solve", "unrolled")


def set_mode(model: nn.Module, mode: str = "solve", applications: int | None = None) -> None:
    """Switch every fixed_point cell under ``model`` (``model`` itself included) to ``mode``:
    "solve" (the solver and the implicit backward, the default) or "unrolled" (exactly
    ``applications`` applications of f from the initial z, default the cell's ``iters``,
    differentiated by autograd through all of them)."""
    if mode not in MODES:
        raise ValueError(f"unknown fixed-point mode {mode!r}; one of {', '.join(MODES)}")
    if applications is not None and (mode != "unrolled" or applications < 1):
        raise ValueError("fixed-point mode: applications is a positive count, and only for mode='unrolled'")
    for m in model.modules():
        m._fixed_point_mode = (mode, applications)


def _unrolled(cell: nn.Module, z: torch.Tensor, args: tuple, n: int) -> torch.Tensor:
    """n applications of the cell from z, autograd through each; residuals recorded as Picard's."""
    trace = []
    for _ in range(n):
        fz = cell(z, *args)
        trace.append(_residual(fz, z))
        z = fz
    cell.residual, cell.steps, cell.trace = trace[-1], n, trace
    return z


def jacobian_loss(fz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """‖εᵀ ∂f/∂z‖² / numel(z) with one ε ~ N(0, I): Hutchinson's estimate of ‖∂f/∂z‖_F² per
    element (locuslab/deq lib/jacobian.py ``jac_loss_estimate(vecs=1)``), differentiable
    (the vector–Jacobian product keeps its graph)."""
    eps = torch.randn_like(z)
    (vjp,) = torch.autograd.grad(fz, z, eps, retain_graph=True, create_graph=True)
    return vjp.pow(2).sum() / z.numel()


def fixed_point(cell: nn.Module, z: torch.Tensor, x: torch.Tensor | None, iters: int, tol: float,
                solver: str = "anderson", backward_solver: str | None = None, backward_iters: int | None = None,
                jac_loss: float = 0.0, jac_freq: float = 1.0) -> torch.Tensor:
    """z* = cell(z*, x) from the initial z by ``solver``; returns cell(z*, x), whose gradient
    is the implicit one (see the module docstring). ``cell.residual``/``cell.steps`` tell how
    the forward solve ended. In the unrolled mode (:func:`set_mode`), f applied a fixed number
    of times instead. With ``jac_loss`` = γ > 0, a training forward (``cell.training`` and
    gradients on) that draws under ``jac_freq`` leaves γ·:func:`jacobian_loss` at z* for the
    model's ``aux_loss()`` and its unweighted value in ``cell.jacobian``."""
    args = () if x is None else (x,)
    mode, applications = getattr(cell, "_fixed_point_mode", ("solve", None))
    if mode == "unrolled":
        cell.tol = tol
        return _unrolled(cell, z, args, iters if applications is None else applications)
    with torch.no_grad():
        best = solve(lambda t: cell(t, *args), z.detach(), iters, tol, solver)
    cell.residual, cell.steps, cell.tol, cell.trace = best.residual, best.steps, tol, best.trace
    if best.residual > tol:
        warnings.warn(f"fixed_point ({solver}): residual {best.residual:.3g} is above tol = {tol:g} after "
                      f"{best.steps} of {iters} steps", EquilibriumWarning, stacklevel=3)
    z_star = best.z.detach()
    if not torch.is_grad_enabled():
        return cell(z_star, *args)
    z_star.requires_grad_(True)
    fz = cell(z_star, *args)
    if not fz.requires_grad:
        return fz
    if jac_loss > 0 and cell.training and (jac_freq >= 1 or float(torch.rand(())) < jac_freq):
        from codegen.torch.runtime import record_aux_loss
        estimate = jacobian_loss(fz, z_star)
        cell.jacobian = float(estimate.detach())
        record_aux_loss(cell, jac_loss * estimate)
    return _ImplicitBackward.apply(fz, z_star, cell, iters if backward_iters is None else backward_iters, tol,
                                   backward_solver or solver)
