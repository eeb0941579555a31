"""Cost formulas of every op kind except MIX (see :mod:`seqdsl.analysis.mixers`).

One registry keyed by OpKind; registering a kind twice raises, and an op kind without a
formula is an error when analysed — never a silent zero. Each formula's docstring states
it. ``x`` is the main input, ``y`` the output, |t| the number of elements of t, e the bytes
per element (4, fp32), W the weights the op reads.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy

from seqdsl.analysis.estimates import Estimates
from seqdsl.ir.graph import Graph, Node, OpKind

E = 4  # bytes per element of activations and weights (fp32)

Formula = Callable[[Graph, Node, "Context"], Estimates]
FORMULAS: dict[OpKind, Formula] = {}


class Context:
    """What a formula may need besides the node: nested analysis of bodies (MoE, DEQ, …)."""

    def __init__(self, analyse_body: Callable[[Graph], Estimates]):
        self.analyse_body = analyse_body


def formula(*kinds: OpKind):
    def deco(fn: Formula) -> Formula:
        for k in kinds:
            if k in FORMULAS:
                raise AssertionError(f"a cost formula for {k} is registered twice")
            FORMULAS[k] = fn
        return fn
    return deco


def numel(g: Graph, n: Node, role: str) -> sympy.Expr:
    port = n.input(role)
    return g.type_of(port).numel() if port is not None else sympy.Integer(0)


def inputs_numel(g: Graph, n: Node) -> sympy.Expr:
    return sum((g.type_of(p).numel() for p in n.inputs), sympy.Integer(0))


def out_numel(n: Node) -> sympy.Expr:
    return sum((t.numel() for t in n.outs), sympy.Integer(0))


def streaming(g: Graph, n: Node, flops_per_out: sympy.Expr | int) -> Estimates:
    """Read every input once, write the output once."""
    y = out_numel(n)
    return Estimates(flops=flops_per_out * y, activation_bytes=E * y,
                     hbm_bytes=E * (inputs_numel(g, n) + y))


@formula(OpKind.INPUT, OpKind.PARAM, OpKind.BUFFER, OpKind.OUTPUT, OpKind.GET)
def no_work(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Inputs, weights and outputs: no work of their own (weights are counted by the layer
    that owns them)."""
    return Estimates()


@formula(OpKind.LINEAR)
def linear(g: Graph, n: Node, ctx: Context) -> Estimates:
    """y = xWᵀ + b: 2·|y|·Din matrix FLOPs (times the weight density if sparse), |y| for b."""
    x = g.type_of(n.input("x"))
    d_in = x.shape[-1]
    y = n.out.numel()
    density = _weight_density(n, n.out.shape[-1], d_in)
    mm = 2 * y * d_in * density
    bias = y if n.input("bias") is not None else 0
    return Estimates(flops=mm + bias, matmul_flops=mm, activation_bytes=E * y,
                     hbm_bytes=E * (x.numel() + y + numel(g, n, "weight") * density))


def _weight_density(n: Node, rows, cols) -> sympy.Expr:
    mask = n.attr("sparsity")
    if mask is None:
        return sympy.Integer(1)
    from seqdsl.analysis.masks import closed_pairs
    pairs = closed_pairs(mask, rows, cols)
    return sympy.Integer(1) if pairs is None else pairs / (rows * cols)


@formula(OpKind.SEQ_PROJECT)
def seq_project(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Projection along the sequence, [.., N, D] -> [.., k, D]: 2·|y|·N matrix FLOPs."""
    x = g.type_of(n.input("x"))
    y = n.out.numel()
    mm = 2 * y * x.shape[-2]
    return Estimates(flops=mm, matmul_flops=mm, activation_bytes=E * y,
                     hbm_bytes=E * (x.numel() + y + numel(g, n, "weight")))


@formula(OpKind.MLP)
def mlp(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Two products 2·T·D·H' and 2·T·H·Dout (H' = 2H when gated), plus the activation (and
    the gate product) on T·H elements and the biases."""
    x = g.type_of(n.input("x"))
    w1, w2 = g.type_of(n.input("w1")), g.type_of(n.input("w2"))
    tokens = x.numel() / x.shape[-1]
    hidden = w2.shape[1]
    density = _weight_density(n, w1.shape[0], w1.shape[1])
    mm = (2 * tokens * w1.shape[0] * w1.shape[1] + 2 * tokens * w2.shape[0] * w2.shape[1]) * density
    act = tokens * hidden * (2 if n.attr("gated") else 1)
    biases = tokens * (w1.shape[0] + w2.shape[0]) if n.input("b1") is not None else 0
    return Estimates(flops=mm + act + biases, matmul_flops=mm,
                     activation_bytes=E * (tokens * w1.shape[0] + n.out.numel()),
                     hbm_bytes=E * (x.numel() + n.out.numel() + (w1.numel() + w2.numel()) * density))


@formula(OpKind.EMBED)
def embed(g: Graph, n: Node, ctx: Context) -> Estimates:
    """A gather: no FLOPs; reads the ids and the selected rows, writes the output."""
    y = n.out.numel()
    return Estimates(activation_bytes=E * y, hbm_bytes=E * (numel(g, n, "tokens") + 2 * y))


@formula(OpKind.NORM)
def norm(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Mean, variance, normalise, scale, shift: 5 FLOPs per element (rms: 4)."""
    return streaming(g, n, 4 if n.attr("fn") == "rmsnorm" else 5)


@formula(OpKind.UNARY, OpKind.BINARY, OpKind.DROPOUT, OpKind.POSITIONS)
def elementwise(g: Graph, n: Node, ctx: Context) -> Estimates:
    """One FLOP per output element (transcendentals count as one)."""
    return streaming(g, n, 1)


@formula(OpKind.SOFTMAX)
def softmax(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Max, subtract, exp, sum, divide: 5 FLOPs per element."""
    return streaming(g, n, 5)


@formula(OpKind.REDUCE, OpKind.POOL)
def reduce(g: Graph, n: Node, ctx: Context) -> Estimates:
    """One FLOP per input element."""
    x = inputs_numel(g, n)
    y = out_numel(n)
    return Estimates(flops=x, activation_bytes=E * y, hbm_bytes=E * (x + y))


@formula(OpKind.REARRANGE, OpKind.SLICE, OpKind.CONCAT)
def data_movement(g: Graph, n: Node, ctx: Context) -> Estimates:
    """No FLOPs; counted as a copy (read and write the output's elements): an upper bound,
    since many are views."""
    y = out_numel(n)
    return Estimates(activation_bytes=E * y, hbm_bytes=2 * E * y)


@formula(OpKind.MATMUL)
def matmul(g: Graph, n: Node, ctx: Context) -> Estimates:
    """[.., m, k] @ [.., k, n]: 2·|y|·k."""
    a = g.type_of(n.input("a"))
    y = n.out.numel()
    mm = 2 * y * a.shape[-1]
    return Estimates(flops=mm, matmul_flops=mm, activation_bytes=E * y, hbm_bytes=E * (inputs_numel(g, n) + y))


@formula(OpKind.CONV1D)
def conv1d(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Depthwise, width w: 2·w FLOPs per output element (+1 for the bias)."""
    w = g.type_of(n.input("weight")).shape[-1]
    return streaming(g, n, 2 * w + (1 if n.input("bias") is not None else 0))


@formula(OpKind.HASH)
def lsh(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Angular LSH: a random rotation to buckets/2 directions (2·|x|·buckets/2 matrix FLOPs)
    and an argmax over the buckets."""
    x = g.type_of(n.input("x"))
    buckets = n.attr("buckets")
    tokens = x.numel() / x.shape[-1]
    mm = x.numel() * buckets
    return Estimates(flops=mm + tokens * buckets, matmul_flops=mm, activation_bytes=E * tokens * (buckets + 1),
                     hbm_bytes=E * (x.numel() + tokens))


@formula(OpKind.SORT_BLOCKS)
def sort_blocks(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Block sums (|x|), block scores (2·G·nb·D·nb), Sinkhorn iterations (2·iters·G·nb²)."""
    x = g.type_of(n.input("x"))
    w = g.type_of(n.input("weight"))
    nb, d = w.shape
    groups = x.numel() / (x.shape[-2] * x.shape[-1])
    mm = 2 * groups * nb * d * nb
    iters = n.attr("iters")
    return Estimates(flops=x.numel() + mm + 2 * iters * groups * nb * nb, matmul_flops=mm,
                     activation_bytes=E * groups * nb * nb, hbm_bytes=E * (x.numel() + groups * nb))


@formula(OpKind.MOE)
def moe(g: Graph, n: Node, ctx: Context) -> Estimates:
    """Router 2·T·D·E (matrix) + softmax over E; each token runs top_k experts, so the
    experts' work is top_k times one expert on all tokens; weights: E experts + router."""
    x = g.type_of(n.input("x"))
    experts, top_k = n.attr("copies"), n.attr("top_k")
    tokens = x.numel() / x.shape[-1]
    body = ctx.analyse_body(n.attr("body"))
    mm = 2 * tokens * x.shape[-1] * experts
    route = Estimates(flops=mm + 5 * tokens * experts, matmul_flops=mm, activation_bytes=E * tokens * experts,
                      hbm_bytes=E * (x.numel() + tokens * experts))
    work = body.scaled(top_k)
    return route + Estimates(work.flops, work.matmul_flops, work.activation_bytes, work.hbm_bytes,
                             body.param_count * experts)


@formula(OpKind.FIXED_POINT)
def fixed_point(g: Graph, n: Node, ctx: Context) -> Estimates:
    """At most ``iters`` applications of the cell (the budget, not the convergence); one set
    of weights; memory of one application (implicit gradients store no iterates)."""
    body = ctx.analyse_body(n.attr("body"))
    iters = n.attr("iters")
    return Estimates(body.flops * iters, body.matmul_flops * iters, body.activation_bytes,
                     body.hbm_bytes * iters, body.param_count)


def fixed_point_backward(g: Graph, n: Node, ctx: Context) -> Estimates:
    """The backward of a fixed_point: the adjoint solve, at most ``backward_iters``
    vector–Jacobian products through the cell (each about 2 applications' work), and its
    products with the weights (about 2 more); with Jacobian regularisation (``jac_loss`` > 0),
    on a ``jac_freq`` share p of the steps, one vector–Jacobian product kept for a double
    backward (about 2 applications) and that double backward (about 4), whose graph is held
    (one more application's activations)."""
    body = ctx.analyse_body(n.attr("body"))
    k = 2 * n.attr("backward_iters", n.attr("iters")) + 2
    out = Estimates(k * body.flops, k * body.matmul_flops, 0, k * body.hbm_bytes)
    if n.attr("jac_loss", 0):
        p = n.attr("jac_freq", 1)
        out = out + Estimates(6 * p * body.flops, 6 * p * body.matmul_flops, body.activation_bytes,
                              6 * p * body.hbm_bytes)
    return out


@formula(OpKind.RECURRENT)
def recurrent(g: Graph, n: Node, ctx: Context) -> Estimates:
    """N/segment applications of the step on one segment each; one set of weights; the
    outputs of every segment are kept."""
    x = g.type_of(n.input("x"))
    steps = x.shape[-2] / n.attr("segment")
    body = ctx.analyse_body(n.attr("body"))
    return Estimates(body.flops * steps, body.matmul_flops * steps, body.activation_bytes * steps,
                     body.hbm_bytes * steps, body.param_count)


def op_estimates(g: Graph, n: Node, ctx: Context) -> Estimates:
    fn = FORMULAS.get(n.kind)
    if fn is None:
        raise KeyError(f"no cost formula for op kind {n.kind.value!r} (node {n.name})")
    return fn(g, n, ctx)


def missing_kinds() -> set[OpKind]:
    """Op kinds without a formula (MIX is handled by the mixers module)."""
    return {k for k in OpKind if k not in FORMULAS and k != OpKind.MIX}
