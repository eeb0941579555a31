"""The higher-order builtins: blocks used as functions (moe, fixed_point, recurrent). One
node each, the block elaborated once as the node's body."""

from __future__ import annotations

import sympy

from seqdsl.check.builtins import Ctx, _need_float, builtin, default_init
from seqdsl.check.signature import P
from seqdsl.ir.graph import OpKind
from seqdsl.ir.types import TensorType, same_dim, show_dim

# ======================================================================================
# Higher-order: blocks used as functions
# ======================================================================================

@builtin("layer", P("x", "tensor"), P("expert", "func"), P("experts", "dim"), P("top_k", "int", 1),
         P("capacity", "scalar", sympy.Rational(5, 4)), P("balance", "scalar", sympy.Rational(1, 100)),
         P("z_loss", "scalar", 0), P("router_init", "init", None))
def moe(ctx: Ctx, x, expert, experts, top_k, capacity, balance, z_loss, router_init):
    """Mixture of experts: a learned router sends each token to its ``top_k`` of ``experts``
    copies of the ``expert`` block (Switch: top_k = 1), at most ``capacity``·T·top_k/E tokens
    each; the module's ``aux_loss()`` holds ``balance``·E·Σ f_e·P_e and ``z_loss``·mean(lse²)."""
    _need_float(ctx, x, "moe()")
    if top_k < 1:
        raise ctx.error("moe(): top_k must be at least 1")
    n = ctx.el.concrete_int(experts, ctx.pos, "moe(): experts")
    if top_k > n:
        raise ctx.error(f"moe(): top_k = {top_k} is more than the {n} experts")
    body, outs = ctx.el.body_graph(expert, [x.type], ctx.pos, f"{ctx.inst}.expert")
    if len(outs) != 1 or outs[0].rank != x.type.rank or not all(
            same_dim(a, b) for a, b in zip(outs[0].shape[:-1], x.type.shape[:-1])):
        raise ctx.error(f"moe(): the expert must map {x.type} to [.., D'], it returns {', '.join(map(str, outs))}")
    router = ctx.param("router", (experts, x.type.shape[-1]), router_init.obj if router_init else default_init())
    return ctx.node(OpKind.MOE, [("x", x), ("router", router)], outs[0],
                    {"body": body, "copies": experts, "top_k": top_k, "capacity": capacity, "balance": balance,
                     "z_loss": z_loss})


@builtin("layer", P("cell", "func"), P("z", "tensor"), P("x", "tensor", None), P("iters", "int", 30),
         P("tol", "scalar", sympy.Rational(1, 10000)),
         P("solver", "choice", "anderson", choices=("anderson", "broyden", "picard")),
         P("backward_solver", "choice", None, choices=("anderson", "broyden", "picard")),
         P("backward_iters", "int", None), P("jac_loss", "scalar", 0), P("jac_freq", "scalar", 1))
def fixed_point(ctx: Ctx, cell, z, x, iters, tol, solver, backward_solver, backward_iters, jac_loss, jac_freq):
    """Deep equilibrium: z* = cell(z*, x), found by ``solver`` from z (at most ``iters``
    steps); gradients by implicit differentiation, the adjoint fixed point solved by
    ``backward_solver`` within ``backward_iters`` (default: the forward's). One set of weights. ``jac_loss`` = γ > 0
    adds Jacobian regularisation to the module's ``aux_loss()`` while training (Bai, Koltun &
    Kolter 2021): γ·‖εᵀ ∂f/∂z‖²/numel(z) at z*, ε ~ N(0, I), on a ``jac_freq`` share of the
    training forwards."""
    types = [z.type] + ([x.type] if x is not None else [])
    body, outs = ctx.el.body_graph(cell, types, ctx.pos, f"{ctx.inst}.cell")
    if len(outs) != 1 or outs[0] != z.type:
        raise ctx.error(f"fixed_point(): the cell must return a tensor like z {z.type}, returns "
                        f"{', '.join(map(str, outs))}")
    if sympy.sympify(jac_loss).is_negative:
        raise ctx.error(f"fixed_point(): jac_loss is a loss weight, at least 0 (got {jac_loss})")
    if sympy.sympify(jac_freq).is_positive is False or (sympy.sympify(jac_freq) - 1).is_positive:
        raise ctx.error(f"fixed_point(): jac_freq is the share of training steps that add the Jacobian "
                        f"loss, in (0, 1] (got {jac_freq})")
    for name, count in (("iters", iters), ("backward_iters", backward_iters)):
        if count is not None and count < 1:
            raise ctx.error(f"fixed_point(): {name} must be at least 1 (got {count})")
    inputs = [("z", z)] + ([("x", x)] if x is not None else [])
    return ctx.node(OpKind.FIXED_POINT, inputs, z.type, {
        "body": body, "iters": iters, "tol": tol, "solver": solver, "backward_solver": backward_solver or solver,
        "backward_iters": iters if backward_iters is None else backward_iters, "jac_loss": jac_loss,
        "jac_freq": jac_freq})


@builtin("layer", P("step", "func"), P("x", "tensor"), P("state", "tensor"), P("segment", "dim"))
def recurrent(ctx: Ctx, step, x, state, segment):
    """Run ``step(x_segment, state) -> (y_segment, state')`` over consecutive segments of
    ``segment`` positions of x [.., N, D], carrying the state (Block-Recurrent Transformer,
    memory of past segments). Returns (y, final state)."""
    n = x.type.shape[-2]
    ctx.el.divide(n, segment, ctx.pos, "recurrent(): the sequence")
    seg_type = TensorType(x.type.shape[:-2] + (segment, x.type.shape[-1]), x.type.dtype)
    body, outs = ctx.el.body_graph(step, [seg_type, state.type], ctx.pos, f"{ctx.inst}.step")
    if len(outs) != 2:
        raise ctx.error(f"recurrent(): the step must return (y, state), it returns {len(outs)} value(s)")
    y, new_state = outs
    if new_state != state.type:
        raise ctx.error(f"recurrent(): the step must return a state like {state.type}, returns {new_state}")
    if y.rank < 2 or not same_dim(y.shape[-2], segment):
        raise ctx.error(f"recurrent(): the step must return y of length {show_dim(segment)}, returns {y}")
    y_full = TensorType(y.shape[:-2] + (n, y.shape[-1]), y.dtype)
    return ctx.node(OpKind.RECURRENT, [("x", x), ("state", state)], (y_full, state.type),
                    {"body": body, "segment": segment})
