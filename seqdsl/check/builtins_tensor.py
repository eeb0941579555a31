"""Tensor builtins: projections, norms, MLPs, convolutions, pooling, elementwise and
shape ops, and the higher-order ones (moe, fixed_point, recurrent). One node each."""

from __future__ import annotations

import re

import sympy

from seqdsl.check.builtins import Ctx, _axis, _float, _need_float, builtin, default_init
from seqdsl.check.signature import P
from seqdsl.check.values import Init, ListV, Scalar, Tensor, describe
from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import ast as A
from seqdsl.frontend import printer
from seqdsl.ir import mix as M
from seqdsl.ir.graph import OpKind
from seqdsl.ir.types import TensorType, broadcast, same_dim, show_dim, simplified

_ONE = sympy.Integer(1)


def _shape_text(shape) -> str:
    return "[" + ", ".join(show_dim(d) for d in shape) + "]"


# ======================================================================================
# Projections, embeddings, positions
# ======================================================================================

def _sparsity(ctx: Ctx, sparsity) -> dict:
    if sparsity is None:
        return {}
    for leaf in M.mask_leaves(sparsity.obj):
        if not isinstance(leaf, M.STATIC_MASKS):
            raise ctx.error(f"a weight's sparsity must be a fixed pattern, not {leaf}",
                            hint="use local(b), butterfly(b), window(w), strided(s), global_tokens(g)")
    return {"sparsity": sparsity.obj}


@builtin("layer", P("x", "tensor"), P("out", "dim"), P("bias", "bool", True),
         P("weight", "tensor", None), P("init", "init", None), P("sparsity", "mask", None))
def linear(ctx: Ctx, x, out, bias, weight, init, sparsity):
    """x W^T + b along the last axis: [.., Din] -> [.., out]. ``weight`` ties to an existing
    [out, Din] tensor; ``sparsity`` keeps only the weights W[o, i] where a fixed mask
    (e.g. butterfly(32)) allows (o, i)."""
    _need_float(ctx, x, "linear()")
    d_in = x.type.shape[-1]
    attrs = _sparsity(ctx, sparsity)
    if weight is None:
        weight = ctx.param("weight", (out, d_in), init.obj if init else default_init())
    elif weight.type.rank != 2 or not (same_dim(weight.type.shape[0], out) and same_dim(weight.type.shape[1], d_in)):
        raise ctx.error(f"linear(): a tied weight must be {_shape_text((out, d_in))}, got {weight.type}")
    inputs = [("x", x), ("weight", weight)]
    if bias:
        inputs.append(("bias", ctx.param("bias", (out,), Init("zeros"))))
    return ctx.node(OpKind.LINEAR, inputs, _float(x.type.shape[:-1] + (out,)), attrs)


@builtin("layer", P("x", "tensor"), P("out", "dim"))
def seq_project(ctx: Ctx, x, out):
    """A learned projection along the sequence axis: [.., N, D] -> [.., out, D] (Linformer's E)."""
    _need_float(ctx, x, "seq_project()")
    n = x.type.shape[-2]
    w = ctx.param("weight", (out, n), default_init())
    return ctx.node(OpKind.SEQ_PROJECT, [("x", x), ("weight", w)], _float(x.type.shape[:-2] + (out, x.type.shape[-1])))


@builtin("layer", P("tokens", "tensor"), P("vocab", "dim", None), P("dim", "dim", None),
         P("table", "tensor", None))
def embed(ctx: Ctx, tokens, vocab, dim, table):
    """Look up rows of a table [vocab, dim] for integer tokens: [..] -> [.., dim]."""
    if tokens.type.dtype != "int":
        raise ctx.error(f"embed() needs integer token ids, got {tokens.type}")
    if table is None:
        if vocab is None or dim is None:
            raise ctx.error("embed() needs vocab= and dim=, or table= to share a weight")
        table = ctx.param("weight", (vocab, dim), default_init())
    elif table.type.rank != 2:
        raise ctx.error(f"embed(): table must be [vocab, dim], got {table.type}")
    return ctx.node(OpKind.EMBED, [("tokens", tokens), ("table", table)],
                    _float(tokens.type.shape + (table.type.shape[1],)))


@builtin("layer", P("n", "dim"))
def arange(ctx: Ctx, n):
    """0, 1, …, n−1 as a float tensor [n] (positions, head indices)."""
    return ctx.node(OpKind.POSITIONS, [], _float((n,)), {"fn": "arange"})


@builtin("layer", P("n", "dim"), P("dim", "dim"))
def sinusoidal(ctx: Ctx, n, dim):
    """Fixed sinusoidal position encodings [n, dim]."""
    return ctx.node(OpKind.POSITIONS, [], _float((n, dim)), {"fn": "sinusoidal"})


# ======================================================================================
# Norms, MLPs, convolutions, pooling
# ======================================================================================

def _norm(ctx: Ctx, x, kind: str, bias: bool, groups=None, eps=None):
    _need_float(ctx, x, f"{kind}()")
    c = x.type.shape[-1]
    inputs = [("x", x), ("weight", ctx.param("weight", (c,), Init("ones")))]
    if bias:
        inputs.append(("bias", ctx.param("bias", (c,), Init("zeros"))))
    attrs = {"fn": kind, "eps": eps}     # eps None: the runtime's default (docstrings below)
    if groups is not None:
        ctx.el.divide(c, groups, ctx.pos, "groupnorm()")
        attrs["groups"] = groups
    return ctx.node(OpKind.NORM, inputs, x.type, attrs)


@builtin("layer", P("x", "tensor"), P("bias", "bool", True), P("affine", "bool", True), P("eps", "scalar", None))
def layernorm(ctx, x, bias, affine, eps):
    """Normalise the last axis to zero mean, unit variance (x − μ)/√(σ² + eps), eps 1e-5 unless
    given; learned scale (and shift) unless ``affine = false``."""
    if not affine:
        _need_float(ctx, x, "layernorm()")
        return ctx.node(OpKind.NORM, [("x", x)], x.type, {"fn": "layernorm", "eps": eps})
    return _norm(ctx, x, "layernorm", bias, eps=eps)


@builtin("layer", P("x", "tensor"), P("eps", "scalar", None))
def rmsnorm(ctx, x, eps):
    """x / √(mean(x²) + eps) over the last axis (eps 1e-6 unless given); learned scale."""
    return _norm(ctx, x, "rmsnorm", False, eps=eps)


@builtin("layer", P("x", "tensor"), P("eps", "scalar", None))
def batchnorm(ctx, x, eps):
    """Normalise each channel (last axis) over batch and sequence (eps 1e-5); scale and shift."""
    return _norm(ctx, x, "batchnorm", True, eps=eps)


@builtin("layer", P("x", "tensor"), P("groups", "dim"), P("eps", "scalar", None))
def groupnorm(ctx, x, groups, eps):
    """Normalise groups of channels of the last axis (RetNet's per-head norm; eps 1e-5)."""
    return _norm(ctx, x, "groupnorm", True, groups, eps)


ACTIVATIONS = ("relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "elu1", "identity", "sin", "cos", "exp",
               "square", "sign", "abs")


@builtin("layer", P("x", "tensor"), P("hidden", "dim"), P("out", "dim", None),
         P("act", "choice", "gelu", choices=ACTIVATIONS), P("gated", "bool", False), P("bias", "bool", True),
         P("sparsity", "mask", None))
def mlp(ctx: Ctx, x, hidden, out, act, gated, bias, sparsity):
    """linear -> act -> linear; ``gated`` makes it act(x W1) ⊙ (x V) (GLU family);
    ``sparsity`` applies a fixed mask to both weight matrices (as in linear)."""
    _need_float(ctx, x, "mlp()")
    d = x.type.shape[-1]
    out = d if out is None else out
    inputs = [("x", x), ("w1", ctx.param("w1", (hidden * (2 if gated else 1), d), default_init()))]
    if bias:
        inputs.append(("b1", ctx.param("b1", (hidden * (2 if gated else 1),), Init("zeros"))))
    inputs.append(("w2", ctx.param("w2", (out, hidden), default_init())))
    if bias:
        inputs.append(("b2", ctx.param("b2", (out,), Init("zeros"))))
    return ctx.node(OpKind.MLP, inputs, _float(x.type.shape[:-1] + (out,)),
                    {"act": act, "gated": gated, **_sparsity(ctx, sparsity)})


@builtin("layer", P("x", "tensor"), P("width", "dim"), P("causal", "bool", True), P("bias", "bool", True))
def conv1d(ctx: Ctx, x, width, causal, bias):
    """Depthwise convolution along the sequence: [.., N, C] -> [.., N, C], one filter of
    ``width`` taps per channel; causal pads on the left."""
    _need_float(ctx, x, "conv1d()")
    if x.type.rank < 2:
        raise ctx.error(f"conv1d() needs [.., N, C], got {x.type}")
    c = x.type.shape[-1]
    inputs = [("x", x), ("weight", ctx.param("weight", (c, width), default_init()))]
    if bias:
        inputs.append(("bias", ctx.param("bias", (c,), Init("zeros"))))
    return ctx.node(OpKind.CONV1D, inputs, x.type, {"causal": causal})


@builtin("layer", P("x", "tensor"), P("size", "dim"), P("kind", "choice", "mean", choices=("mean", "max", "sum")))
def pool(ctx: Ctx, x, size, kind):
    """Pool non-overlapping windows of ``size`` along the sequence: [.., N, C] -> [.., N/size, C]."""
    if x.type.rank < 2:
        raise ctx.error(f"pool() needs [.., N, C], got {x.type}")
    n = ctx.el.divide(x.type.shape[-2], size, ctx.pos, "pool()")
    return ctx.node(OpKind.POOL, [("x", x)], _float(x.type.shape[:-2] + (n, x.type.shape[-1])),
                    {"size": size, "fn": kind})


def _reduce(ctx: Ctx, x, axis: int, keep: bool, fn: str):
    a = _axis(ctx, x, axis)
    shape = list(x.type.shape)
    if keep:
        shape[a] = _ONE
    else:
        del shape[a]
    return ctx.node(OpKind.REDUCE, [("x", x)], _float(shape), {"fn": fn, "axis": a, "keep": keep})


@builtin("elementwise", P("x", "tensor"), P("axis", "int", -1), P("keep", "bool", False))
def mean(ctx, x, axis, keep):
    """Mean over ``axis``."""
    return _reduce(ctx, x, axis, keep, "mean")


@builtin("elementwise", P("x", "tensor"), P("axis", "int", -1), P("keep", "bool", False))
def sum_(ctx, x, axis, keep):
    """Sum over ``axis``."""
    return _reduce(ctx, x, axis, keep, "sum")


@builtin("elementwise", P("x", "tensor"), P("axis", "int", -1), P("keep", "bool", False))
def max_(ctx, x, axis, keep):
    """Maximum over ``axis``."""
    return _reduce(ctx, x, axis, keep, "max")


@builtin("elementwise", P("x", "tensor"), P("axis", "int", -1))
def softmax(ctx: Ctx, x, axis):
    """Softmax over ``axis`` (also a norm: mix(..., norm = softmax))."""
    _need_float(ctx, x, "softmax()")
    return ctx.node(OpKind.SOFTMAX, [("x", x)], x.type, {"axis": _axis(ctx, x, axis)})


@builtin("layer", P("x", "tensor"), P("fraction", "scalar", 1), P("base", "scalar", 10000))
def rotary(ctx: Ctx, x, fraction, base):
    """Rotary position embedding (RoFormer) of x [.., N, D]: rotate pairs of the first
    fraction·D features by angles n·base^(−2i/d) for position n (the axis −2)."""
    _need_float(ctx, x, "rotary()")
    if x.type.rank < 2:
        raise ctx.error(f"rotary() needs [.., N, D], got {x.type}")
    ctx.el.require(sympy.Eq(sympy.Mod(x.type.shape[-1] * fraction, 2), 0),
                   f"rotary(): the rotated width {show_dim(x.type.shape[-1])}·{fraction} must be even", ctx.pos)
    return ctx.node(OpKind.UNARY, [("x", x)], x.type, {"fn": "rotary", "fraction": fraction, "base": base})


@builtin("layer", P("x", "tensor"), P("p", "scalar", sympy.Rational(1, 10)))
def dropout(ctx: Ctx, x, p):
    """Zero a fraction ``p`` of entries in training (scaled); identity in evaluation."""
    return ctx.node(OpKind.DROPOUT, [("x", x)], x.type, {"p": p})


# ---- elementwise functions (tensor -> tensor; exact on numbers) ----------------------

_SYMPY_FN = {
    "exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos,
    "tanh": sympy.tanh, "abs": sympy.Abs, "sigmoid": lambda x: 1 / (1 + sympy.exp(-x)),
    "softplus": lambda x: sympy.log(1 + sympy.exp(x)), "square": lambda x: x ** 2,
    "rsqrt": lambda x: 1 / sympy.sqrt(x), "sign": sympy.sign,
}
UNARY_FNS = ("relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "exp", "log", "sqrt", "abs",
             "sin", "cos", "elu1", "square", "rsqrt", "log_sigmoid", "sign", "erf", "stop_gradient")


def _make_unary(fn_name: str):
    def fn(ctx: Ctx, x):
        if isinstance(x, Scalar):
            if fn_name not in _SYMPY_FN:
                raise ctx.error(f"{fn_name}() applies to tensors, got a number")
            return Scalar(_SYMPY_FN[fn_name](x.expr))
        if not isinstance(x, Tensor):
            raise ctx.error(f"{fn_name}() needs a tensor or a number, got {describe(x)}")
        _need_float(ctx, x, f"{fn_name}()")
        return ctx.node(OpKind.UNARY, [("x", x)], x.type, {"fn": fn_name})
    fn.__name__ = fn_name
    fn.__doc__ = ("The identity forward; no gradient flows back through it." if fn_name == "stop_gradient"
                  else f"Elementwise {fn_name}.")
    return fn


for _name in UNARY_FNS:
    builtin("elementwise", P("x", "any"))(_make_unary(_name))


def elementwise(el, frame, op: str, a, b, pos: Pos) -> Tensor:
    """a op b with broadcasting; one side may be a number (kept as an attribute)."""
    ctx = Ctx(el, frame, pos, {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}[op])
    inputs, attrs = [], {"op": op}
    if isinstance(a, Scalar):
        attrs.update(scalar=a.expr, side="left")
    else:
        inputs.append(("a", a))
    if isinstance(b, Scalar):
        attrs.update(scalar=b.expr, side="right")
    else:
        inputs.append(("b", b))
    tensors = [t for _, t in inputs]
    for t in tensors:
        if t.type.dtype != "float":
            raise ctx.error(f"'{op}' needs float tensors, got {t.type}", hint="embed token ids first")
    shape = tensors[0].type.shape
    if len(tensors) == 2:
        out = broadcast(tensors[0].type.shape, tensors[1].type.shape)
        if out is None:
            raise ctx.error(f"shapes {tensors[0].type} and {tensors[1].type} do not broadcast for '{op}'")
        shape = out
    return ctx.node(OpKind.BINARY, inputs, _float(shape), attrs)


def matmul(el, frame, a, b, pos: Pos) -> Tensor:
    ctx = Ctx(el, frame, pos, "matmul")
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        raise ctx.error(f"'@' multiplies tensors, got {describe(a)} and {describe(b)}")
    if a.type.rank < 2 or b.type.rank < 2:
        raise ctx.error(f"'@' needs tensors of rank ≥ 2, got {a.type} and {b.type}")
    if not same_dim(a.type.shape[-1], b.type.shape[-2]):
        raise ctx.error(f"'@': inner dims differ: {a.type} @ {b.type} "
                        f"({show_dim(a.type.shape[-1])} vs {show_dim(b.type.shape[-2])})")
    batch = broadcast(a.type.shape[:-2], b.type.shape[:-2])
    if batch is None:
        raise ctx.error(f"'@': batch dims of {a.type} and {b.type} do not broadcast")
    return ctx.node(OpKind.MATMUL, [("a", a), ("b", b)], _float(batch + (a.type.shape[-2], b.type.shape[-1])))


# ======================================================================================
# Shape ops
# ======================================================================================

_GROUP = re.compile(r"\(([^()]*)\)|(\S+)")


def _parse_side(ctx: Ctx, text: str, pattern: str) -> list[list[str]]:
    groups = []
    for m in _GROUP.finditer(text):
        if m.group(2) is not None and ("(" in m.group(2) or ")" in m.group(2)):
            raise ctx.error(f"rearrange(): unbalanced parentheses in {pattern!r}")
        names = m.group(1).split() if m.group(1) is not None else [m.group(2)]
        for n in names:
            if not (n == "1" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)):
                raise ctx.error(f"rearrange(): bad axis name {n!r} in {pattern!r}")
        groups.append(names)
    return groups


@builtin("shape", P("x", "tensor"), P("pattern", "str"), P("sizes", "sizes"))
def rearrange(ctx: Ctx, x, pattern, sizes):
    """Permute, split and merge axes, einops-style: rearrange(x, "b n (h d) -> b h n d", h = H)."""
    if pattern.count("->") != 1:
        raise ctx.error(f"rearrange(): the pattern needs one '->', got {pattern!r}")
    left_text, right_text = pattern.split("->")
    left, right = _parse_side(ctx, left_text, pattern), _parse_side(ctx, right_text, pattern)
    if len(left) != x.type.rank:
        raise ctx.error(f"rearrange(): the left side of {pattern!r} has {len(left)} axes but x is {x.type}")
    known = dict(sizes)
    for group, dim in zip(left, x.type.shape):
        names = [n for n in group if n != "1"]
        unknown = [n for n in names if n not in known]
        prod = sympy.Mul(*[known[n] for n in names if n in known]) if names else _ONE
        if len(unknown) > 1:
            raise ctx.error(f"rearrange(): cannot split {show_dim(dim)} into {' '.join(unknown)}",
                            hint=f"give the sizes, e.g. {unknown[0]} = ...")
        if unknown:
            known[unknown[0]] = ctx.el.divide(dim, prod, ctx.pos, "rearrange()")
        elif not same_dim(prod, dim):
            raise ctx.error(f"rearrange(): axis ({' '.join(group)}) of size {show_dim(prod)} does not match "
                            f"{show_dim(dim)} in {x.type}")
    left_names = {n for g in left for n in g if n != "1"}
    right_names = [n for g in right for n in g if n != "1"]
    for n in right_names:
        if n not in left_names:
            raise ctx.error(f"rearrange(): axis {n!r} on the right of {pattern!r} is not on the left")
    missing = left_names - set(right_names)
    if missing:
        raise ctx.error(f"rearrange(): axes {', '.join(sorted(missing))} of {pattern!r} disappear",
                        hint="use mean(), sum() or a slice to remove an axis")
    shape = tuple(sympy.Mul(*[known[n] for n in g if n != "1"]) if g else _ONE for g in right)
    given_sizes = tuple(sorted((k, v) for k, v in sizes.items()))
    return ctx.node(OpKind.REARRANGE, [("x", x)], TensorType(shape, x.type.dtype),
                    {"pattern": pattern, "sizes": given_sizes})


@builtin("shape", P("x", "tensor"), P("a", "int", -2), P("b", "int", -1))
def transpose(ctx: Ctx, x, a, b):
    """Swap two axes."""
    i, j = _axis(ctx, x, a), _axis(ctx, x, b)
    perm = list(range(x.type.rank))
    perm[i], perm[j] = perm[j], perm[i]
    shape = tuple(x.type.shape[p] for p in perm)
    return ctx.node(OpKind.REARRANGE, [("x", x)], TensorType(shape, x.type.dtype), {"perm": tuple(perm)})


@builtin("shape", P("x", "tensor"), P("shape", "any"))
def expand(ctx: Ctx, x, shape):
    """Broadcast x to ``shape`` (a list of sizes), e.g. a learned initial state to the batch."""
    if not isinstance(shape, ListV) or not all(isinstance(s, Scalar) for s in shape.items):
        raise ctx.error(f"expand(): shape must be a list of sizes, got {describe(shape)}")
    target = tuple(s.expr for s in shape.items)
    if broadcast(x.type.shape, target) != target:
        raise ctx.error(f"expand(): {x.type} does not broadcast to {_shape_text(target)}")
    return ctx.node(OpKind.REARRANGE, [("x", x)], TensorType(target, x.type.dtype), {"expand": target})


@builtin("shape", P("xs", "tensors"), P("axis", "int", -1))
def concat(ctx: Ctx, xs, axis):
    """Join tensors along ``axis``; the other dims must agree."""
    first = xs[0]
    a = _axis(ctx, first, axis)
    total = sympy.Integer(0)
    for t in xs:
        if t.type.rank != first.type.rank or any(
                i != a and not same_dim(d, e) for i, (d, e) in enumerate(zip(t.type.shape, first.type.shape))):
            raise ctx.error(f"concat(): {t.type} does not fit {first.type} along axis {axis}")
        total += t.type.shape[a]
    shape = list(first.type.shape)
    shape[a] = total
    return ctx.node(OpKind.CONCAT, [(f"x{i}", t) for i, t in enumerate(xs)], TensorType(tuple(shape), first.type.dtype),
                    {"axis": a})


def index(el, frame, base, e: A.Index):
    ctx = Ctx(el, frame, e.pos, "slice")
    if isinstance(base, ListV):
        if len(e.subs) != 1 or isinstance(e.subs[0], (A.Slice, A.EllipsisIndex, A.NewAxis)):
            raise ctx.error("a list takes one index")
        i = el.value(frame, el.evaluate(frame, e.subs[0]))
        if not isinstance(i, Scalar):
            raise ctx.error(f"a list index must be a number, got {describe(i)}")
        k = el.concrete_int(i.expr, e.pos, "the index")
        if not -len(base.items) <= k < len(base.items):
            raise ctx.error(f"index {k} is out of range for a list of {len(base.items)}")
        return base.items[k]
    if not isinstance(base, Tensor):
        raise ctx.error(f"cannot index {describe(base)}")
    subs = list(e.subs)
    n_ell = sum(isinstance(s, A.EllipsisIndex) for s in subs)
    if n_ell > 1:
        raise ctx.error("at most one '...' in an index")
    consuming = [s for s in subs if not isinstance(s, (A.EllipsisIndex, A.NewAxis))]
    if len(consuming) > base.type.rank:
        raise ctx.error(f"too many indices ({len(consuming)}) for {base.type}")
    if n_ell:
        at = subs.index(next(s for s in subs if isinstance(s, A.EllipsisIndex)))
        subs = subs[:at] + [A.Slice(None, None)] * (base.type.rank - len(consuming)) + subs[at + 1:]
    else:
        subs = subs + [A.Slice(None, None)] * (base.type.rank - len(consuming))
    shape, spec, axis = [], [], 0
    for s in subs:
        if isinstance(s, A.NewAxis):
            shape.append(_ONE)
            spec.append(("new",))
            continue
        dim = base.type.shape[axis]
        if isinstance(s, A.Slice):
            lo = _bound(el, frame, s.lo, dim, sympy.Integer(0))
            hi = _bound(el, frame, s.hi, dim, dim)
            for bound, written in ((lo, s.lo), (hi, s.hi)):
                if written is not None and not _within(
                        el, bound, dim, True, f"slice bound {printer.expr(written)} is out of range for "
                        f"an axis of size {show_dim(dim)}", written.pos):
                    raise SeqError(f"slice bound {printer.expr(written)} is out of range for "
                                   f"{_axis_text(el, dim)}", written.pos)
            length = simplified(hi - lo)
            value = length.subs(el.subs)
            if value.is_number and value <= 0:
                raise ctx.error(f"slice {show_dim(lo)}:{show_dim(hi)} of an axis of size {show_dim(dim)} is empty")
            shape.append(length)
            spec.append(("slice", lo, hi))
        else:
            i = el.value(frame, el.evaluate(frame, s))
            if not isinstance(i, Scalar):
                raise ctx.error(f"an index must be a number or a slice, got {describe(i)}")
            k = i.expr + dim if i.expr.is_negative else i.expr
            if not _within(el, k, dim, False, f"index {printer.expr(s)} is out of range for an axis of "
                           f"size {show_dim(dim)}", s.pos):
                raise SeqError(f"index {printer.expr(s)} is out of range for {_axis_text(el, dim)}", s.pos)
            spec.append(("index", k))
        axis += 1
    return ctx.node(OpKind.SLICE, [("x", base)], TensorType(tuple(shape), base.type.dtype), {"index": tuple(spec)})


def _within(el, k, dim, inclusive: bool, what: str = "", pos=None) -> bool:
    """False only when the sizes are known and k (an index, or with ``inclusive`` a slice
    bound) lies outside 0..dim. A bound that depends on sizes is also kept as a constraint,
    so that a module called at other sizes checks it again (PyTorch would clamp silently)."""
    k, dim = sympy.sympify(k), sympy.sympify(dim)
    k_v, dim_v = k.subs(el.subs), dim.subs(el.subs)
    if not (k_v.is_number and dim_v.is_number):
        return True
    inside = bool(0 <= k_v <= dim_v) if inclusive else bool(0 <= k_v < dim_v)
    if inside and what and (k.free_symbols or dim.free_symbols):
        rel = sympy.And(sympy.Le(0, k), sympy.Le(k, dim) if inclusive else sympy.Lt(k, dim))
        if rel not in (sympy.true, sympy.false):
            el.constraints.append((rel, what, pos))
    return inside


def _axis_text(el, dim) -> str:
    value = sympy.sympify(dim).subs(el.subs)
    size = show_dim(dim) + (f" = {value}" if dim.free_symbols and value.is_number else "")
    return f"an axis of size {size}"


def _bound(el, frame, e, dim, default):
    if e is None:
        return default
    v = el.value(frame, el.evaluate(frame, e))
    if not isinstance(v, Scalar):
        raise SeqError(f"a slice bound must be a number, got {describe(v)}", e.pos)
    return v.expr + dim if v.expr.is_negative else v.expr


def attribute(el, frame, base, attr: str, pos: Pos):
    if isinstance(base, Tensor):
        if attr == "shape":
            return ListV(tuple(Scalar(d) for d in base.type.shape))
        if attr == "T":
            return transpose(Ctx(el, frame, pos, "transpose"), base, -2, -1)
    raise SeqError(f"{describe(base)} has no attribute {attr!r}", pos,
                   hint="tensors have .shape and .T" if isinstance(base, Tensor) else None)


# ======================================================================================
# Content-based sparsity
# ======================================================================================

@builtin("layer", P("x", "tensor"), P("buckets", "dim"), P("seed", "int", 0))
def lsh(ctx: Ctx, x, buckets, seed):
    """Angular LSH bucket ids [.., N] of vectors [.., N, D]: argmax over [xR, −xR] for a
    fixed random rotation R (Reformer)."""
    _need_float(ctx, x, "lsh()")
    return ctx.node(OpKind.HASH, [("x", x)], TensorType(x.type.shape[:-1], "int"),
                    {"buckets": buckets, "seed": seed})


@builtin("layer", P("x", "tensor"), P("block", "dim"), P("iters", "int", 8))
def sinkhorn_sort(ctx: Ctx, x, block, iters):
    """For each block of ``block`` rows of x [.., N, D], the key block it should attend to:
    block summaries -> learned scores -> Sinkhorn normalisation -> argmax; int [.., N/block]."""
    _need_float(ctx, x, "sinkhorn_sort()")
    nb = ctx.el.divide(x.type.shape[-2], block, ctx.pos, "sinkhorn_sort()")
    w = ctx.param("weight", (nb, x.type.shape[-1]), default_init())
    return ctx.node(OpKind.SORT_BLOCKS, [("x", x), ("weight", w)], TensorType(x.type.shape[:-2] + (nb,), "int"),
                    {"block": block, "iters": iters})
