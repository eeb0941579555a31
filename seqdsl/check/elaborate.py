"""The checker: elaborate one entry of a program into a typed layer graph.

Elaboration runs the definitions like a macro expander over *types*, never over data:
calls to user definitions are inlined under a layer path, ``repeat`` with a known
count is unrolled, ``if`` picks its branch from values known at compile time, and each
primitive becomes a node whose output shape is computed (symbolically, with sympy)
and checked. Nothing in a ``.seq`` file is ever evaluated as Python.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import sympy

from seqdsl.check import builtins as B
from seqdsl.check.program import Program
from seqdsl.check.scalars import arith, number
from seqdsl.check.statements import Frame, Statements, _join
from seqdsl.check.values import Func, ListV, Scalar, Str, Tensor, TupleV, Word, describe
from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import ast as A
from seqdsl.frontend.limits import MAX_CALL_DEPTH, MAX_NODES, MAX_SIZE, check_size
from seqdsl.ir.graph import Graph, OpKind, Port, param_count
from seqdsl.ir.types import TensorType, same_dim, show_dim, simplified

CONSTANTS = {"pi": sympy.pi}   # looked up after every declared name, so a dim may shadow it


@dataclass
class Elaborated:
    """The result of checking an entry: its graph and the sizes it was checked at."""

    entry: A.Definition
    graph: Graph
    sizes: dict[str, sympy.Basic]
    subs: dict[sympy.Symbol, sympy.Basic]
    constraints: list[tuple[sympy.Basic, str, Pos]] = field(default_factory=list)
    concretized: set[str] = field(default_factory=set)

    def param_count(self) -> sympy.Expr:
        return param_count(self.graph)


class Elaborator(Statements):
    def __init__(self, prog: Program, sizes: dict[str, sympy.Basic]):
        self.prog = prog
        self.sizes = sizes
        self.subs = {info.symbol: sizes[name] for name, info in prog.dims.items() if name in sizes}
        self.graph = Graph("main")
        self.params: dict[str, Tensor] = {}
        self.stack: list[str] = []
        self.used: dict[tuple[int, str], set[str]] = {}
        self.roles = 0
        self.constraints: list[tuple[sympy.Basic, str, Pos]] = []
        self.shared_depth = 0
        self.statements = 0     # checked so far, repeats unrolled and calls inlined (MAX_STATEMENTS)
        self.nodes_made = 0     # in the graph and its bodies (MAX_NODES)
        # Dims whose value the graph's structure depends on (a repeat count, an `if`, an
        # integer option): a module built from this graph is valid only at these values.
        self.concretized: set[str] = set()

    # ---- helpers used by builtins ------------------------------------------------
    def concrete(self, expr: sympy.Basic, pos: Pos, what: str) -> sympy.Basic:
        """The value of ``expr`` at the known sizes; an error if it stays symbolic."""
        expr = sympy.sympify(expr)
        self.concretized |= {s.name for s in expr.free_symbols}
        value = expr.subs(self.subs) if self.subs else expr
        if value.free_symbols:
            missing = ", ".join(sorted(str(s) for s in value.free_symbols))
            raise SeqError(f"{what} must be known at compile time, but depends on {missing}", pos,
                           hint=f"give {missing} a default in its declaration or a value with --set")
        return value

    def concrete_int(self, expr: sympy.Basic, pos: Pos, what: str) -> int:
        value = self.concrete(expr, pos, what)
        if not value.is_integer:
            raise SeqError(f"{what} must be an integer, got {value}", pos)
        return int(value)

    def truth(self, v: Any, pos: Pos, what: str = "the condition") -> bool:
        if isinstance(v, Scalar):
            value = self.concrete(v.expr, pos, what)
            if value in (sympy.true, sympy.false):
                return bool(value)
            if value.is_number:
                return bool(value != 0)
        raise SeqError(f"{what} must be a boolean or a number, got {describe(v)}", pos)

    def require(self, cond: sympy.Basic, message: str, pos: Pos) -> None:
        """A constraint on sizes: checked now if the sizes are known; kept whenever it depends
        on a size, so that a module checks it again at the sizes of each call."""
        cond = sympy.sympify(cond)
        for d in _divisors(cond):   # kept first: a call's check reads them before the condition
            self._require(sympy.Ne(d, 0), f"{message} (it divides by {show_dim(d)}, which must not be 0)", pos)
        self._require(cond, message, pos)

    def _require(self, cond: sympy.Basic, message: str, pos: Pos) -> None:
        try:
            value = cond.subs(self.subs)
        except ZeroDivisionError:
            raise SeqError(f"{message} (a division by zero at these sizes)", pos) from None
        if value == sympy.false:
            raise SeqError(message, pos)
        if cond.free_symbols and (cond, message, pos) not in self.constraints:
            self.constraints.append((cond, message, pos))

    def divide(self, a: sympy.Expr, b: sympy.Expr, pos: Pos, what: str) -> sympy.Expr:
        """a / b as a size; requires b to divide a."""
        if b == 0:
            raise SeqError("division by zero", pos)
        q = simplified(a / b)
        if q.is_Integer is False and not q.free_symbols:
            raise SeqError(f"{what}: {show_dim(a)} is not divisible by {show_dim(b)}", pos)
        self.require(sympy.Eq(sympy.Mod(a, b), 0), f"{what}: {show_dim(a)} must be divisible by "
                     f"{show_dim(b)}", pos)
        return q

    def new_role(self, base: str) -> str:
        self.roles += 1
        return f"{base}{self.roles}"

    def instance(self, frame: Frame, base: str) -> str:
        used = self.used.setdefault((id(self.graph), frame.prefix), set())
        name, k = base, 1
        while name in used:
            name = f"{base}_{k}"
            k += 1
        used.add(name)
        return name

    def node(self, kind: OpKind, frame: Frame, name: str, inputs: list[tuple[str, Tensor]],
             outs: TensorType | tuple[TensorType, ...], pos: Pos, attrs: dict | None = None,
             full_name: str | None = None) -> Any:
        path = full_name or _join(frame.prefix, name)
        self.nodes_made += 1
        if self.nodes_made > MAX_NODES:      # in all graphs: the checker's time grows with it
            raise SeqError(f"the program makes more than {MAX_NODES} layers and operations", pos,
                           hint="nested repeats and calls multiply; use 'shared' or fewer layers")
        ports = [Port(role, t.port.node, t.port.index) for role, t in inputs]
        n = self.graph.add(kind, path, ports, outs, attrs, pos)
        if len(n.outs) == 1:
            return Tensor(Port("out", n.id, 0), n.out)
        return TupleV(tuple(Tensor(Port("out", n.id, i), t) for i, t in enumerate(n.outs)))

    def param(self, frame: Frame, name: str, shape: tuple, init: Any, pos: Pos,
              trainable: bool = True) -> Tensor:
        """A learnable weight at ``<param_prefix>.<name>``; shared repeats reuse it."""
        path = _join(frame.param_prefix, name)
        shape = tuple(sympy.sympify(s) for s in shape)
        for d in shape:
            self.check_dim(d, pos, f"the shape of parameter {path}")
        old = self.params.get(path)
        if old is not None:
            if self.shared_depth and all(same_dim(a, b) for a, b in zip(old.type.shape, shape)) \
                    and len(old.type.shape) == len(shape):
                return old
            raise SeqError(f"parameter {path!r} is declared twice", pos)
        kind = OpKind.PARAM if trainable else OpKind.BUFFER
        t = self.node(kind, frame, name, [], TensorType(shape), pos, {"init": init},
                      full_name=self._unique_path(path))
        self.params[path] = t
        return t

    def _unique_path(self, path: str) -> str:
        names = self.graph.names
        out, k = path, 1
        while out in names:
            out = f"{path}_{k}"
            k += 1
        return out

    def same(self, a: sympy.Basic, b: sympy.Basic) -> bool:
        """Equal sizes. A number equals a size expression that has that value at the sizes
        this elaboration is for (a stack of L unrolled layers has L = 16 entries)."""
        if same_dim(a, b):
            return True
        a_num, b_num = sympy.sympify(a).is_number, sympy.sympify(b).is_number
        if a_num != b_num:
            expr = b if a_num else a
            value = sympy.sympify(expr).subs(self.subs)
            equal = bool(value.is_number and value == (a if a_num else b))
            if equal:     # the shapes agree only at these sizes
                self.concretized |= {s.name for s in sympy.sympify(expr).free_symbols}
            return equal
        return False

    def check_dim(self, d: sympy.Basic, pos: Pos, what: str) -> None:
        value = sympy.sympify(check_size(d, pos, f"{what}: size expression")).subs(self.subs)
        if value.is_number and (not value.is_integer or value <= 0):
            raise SeqError(f"{what}: size {show_dim(d)} = {value} is not a positive integer", pos)
        if value.is_number and value > MAX_SIZE:
            raise SeqError(f"{what}: size {show_dim(d)} = {value} is too large (at most 2**53)", pos)

    # ---- names -------------------------------------------------------------------
    def lookup(self, frame: Frame, name: str, pos: Pos) -> Any:
        if name in frame.locals:
            return frame.locals[name]
        info = self.prog.dims.get(name)
        if info is not None:
            return Scalar(info.derived if info.derived is not None else info.symbol)
        if name in self.prog.definitions:
            return Func(name, self.prog.definitions[name])
        if name in B.REGISTRY:
            return Func(name)
        if name in CONSTANTS:
            return Scalar(CONSTANTS[name])
        return Word(name, pos)

    def unknown(self, frame: Frame | None, w: Word) -> SeqError:
        local = list(frame.locals) if frame is not None else []
        pool = local + list(self.prog.dims) + list(self.prog.definitions) + list(B.REGISTRY)
        close = difflib.get_close_matches(w.name, pool, n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        return SeqError(f"unknown name {w.name!r}", w.pos, hint=hint)

    def unknown_word(self, w: Word) -> SeqError:
        return self.unknown(None, w)

    def value(self, frame: Frame, v: Any) -> Any:
        if isinstance(v, Word):
            raise self.unknown(frame, v)
        return v

    # ---- expressions -------------------------------------------------------------
    def evaluate(self, frame: Frame, e: A.Expr, name: str | None = None) -> Any:
        match e:
            case A.Name(id=n):
                return self.lookup(frame, n, e.pos)
            case A.Number():
                return Scalar(number(e))
            case A.String(value=s):
                return Str(s)
            case A.Bool(value=b):
                return Scalar(sympy.true if b else sympy.false)
            case A.ListExpr(items=items):
                return ListV(tuple(self.value(frame, self.evaluate(frame, i)) for i in items))
            case A.Call():
                return self.call(frame, e, name)
            case A.Index():
                return B.index(self, frame, self.value(frame, self.evaluate(frame, e.base)), e)
            case A.Attr(base=b, name=attr):
                return B.attribute(self, frame, self.value(frame, self.evaluate(frame, b)), attr, e.pos)
            case A.UnaryOp(op=op, operand=o):
                return self.unary(frame, op, self.value(frame, self.evaluate(frame, o)), e.pos)
            case A.BinOp(op="and" | "or" as op, left=l, right=r):
                left = self.truth(self.value(frame, self.evaluate(frame, l)), l.pos)
                if (op == "and" and not left) or (op == "or" and left):
                    return Scalar(sympy.true if left else sympy.false)
                right = self.truth(self.value(frame, self.evaluate(frame, r)), r.pos)
                return Scalar(sympy.true if right else sympy.false)
            case A.BinOp(op="&" | "|" as op, left=l, right=r):
                left = self.value(frame, self.evaluate(frame, l))
                right = self.value(frame, self.evaluate(frame, r))
                return B.combine_masks(self, op, left, right, e.pos, (l, r))
            case A.BinOp(op=op, left=l, right=r):
                left = self.value(frame, self.evaluate(frame, l))
                right = self.value(frame, self.evaluate(frame, r))
                return self.binary(frame, op, left, right, e.pos)
            case A.Cond(test=t, then=a, orelse=b):
                chosen = a if self.truth(self.value(frame, self.evaluate(frame, t)), t.pos) else b
                return self.evaluate(frame, chosen, name)
        raise SeqError(f"cannot evaluate {type(e).__name__}", getattr(e, "pos", None))

    def unary(self, frame: Frame, op: str, v: Any, pos: Pos) -> Any:
        if op == "not":
            return Scalar(sympy.false if self.truth(v, pos) else sympy.true)
        if op == "~":
            raise SeqError("'~' (mask complement) is not supported: the complement of a structured "
                           "mask has no block structure", pos, hint="write the mask you want directly")
        if isinstance(v, Scalar):
            return Scalar(-v.expr)
        if isinstance(v, Tensor):
            return B.elementwise(self, frame, "*", v, Scalar(sympy.Integer(-1)), pos)
        raise SeqError(f"cannot negate {describe(v)}", pos)

    def binary(self, frame: Frame, op: str, a: Any, b: Any, pos: Pos) -> Any:
        if op in ("&", "|"):
            return B.combine_masks(self, op, a, b, pos)
        if op == "in":
            if not isinstance(b, ListV):
                raise SeqError(f"'in' needs a list on its right, got {describe(b)}", pos)
            if not isinstance(a, Scalar):
                raise SeqError(f"'in' tests a number, got {describe(a)}", pos)
            x = self.concrete(a.expr, pos, "the left side of 'in'")
            found = any(isinstance(i, Scalar) and self.concrete(i.expr, pos, "a list item") == x for i in b.items)
            return Scalar(sympy.true if found else sympy.false)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            if not (isinstance(a, Scalar) and isinstance(b, Scalar)):
                raise SeqError(f"'{op}' compares numbers, got {describe(a)} and {describe(b)}", pos)
            x, y = self.concrete(a.expr, pos, "a comparison"), self.concrete(b.expr, pos, "a comparison")
            result = {"==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
            try:
                return Scalar(sympy.true if bool(result) else sympy.false)
            except TypeError:   # a relation between numbers that sympy cannot decide exactly
                raise SeqError(f"cannot decide '{op}' exactly between these numbers", pos) from None
        if isinstance(a, Scalar) and isinstance(b, Scalar):
            return Scalar(arith(op, a.expr, b.expr, pos, self.subs))
        if op == "@":
            return B.matmul(self, frame, a, b, pos)
        if isinstance(a, (Tensor, Scalar)) and isinstance(b, (Tensor, Scalar)):
            if op in ("//", "%"):
                raise SeqError(f"'{op}' applies to numbers, not tensors", pos)
            return B.elementwise(self, frame, op, a, b, pos)
        raise SeqError(f"'{op}' does not apply to {describe(a)} and {describe(b)}", pos)

    # ---- calls -------------------------------------------------------------------
    def call(self, frame: Frame, e: A.Call, name: str | None) -> Any:
        f = self.callee(frame, e.func)
        if isinstance(f, Word):
            raise self.unknown(frame, f)
        if not isinstance(f, Func):
            raise SeqError(f"{describe(f)} is not a function", e.func.pos)
        args = [self.evaluate(frame, a) for a in e.args]
        kwargs = {}
        for kw in e.kwargs:
            if kw.name in kwargs:
                raise SeqError(f"argument {kw.name!r} given twice", kw.pos)
            kwargs[kw.name] = (self.evaluate(frame, kw.value), kw.pos)
        if f.definition is not None:
            args = [self.value(frame, a) for a in args]
            kwargs = {k: (self.value(frame, v), p) for k, (v, p) in kwargs.items()}
            inst = self.instance(frame, name or f.name)
            return self.call_def(frame, f.definition, args, kwargs, e.pos, inst)
        return B.call_builtin(self, frame, f.name, args, kwargs, e, name)

    def callee(self, frame: Frame, e: A.Expr) -> Any:
        """Functions have their own namespace: ``causal()`` is the mask even where an option
        is named ``causal``. A local holding a function (a block passed as an argument) wins."""
        if isinstance(e, A.Name):
            local = frame.locals.get(e.id)
            if isinstance(local, Func):
                return local
            if e.id in self.prog.definitions:
                return Func(e.id, self.prog.definitions[e.id])
            if e.id in B.REGISTRY:
                return Func(e.id)
        return self.evaluate(frame, e)

    def call_def(self, caller: Frame | None, d: A.Definition, args: list, kwargs: dict, pos: Pos,
                 inst: str, prefix: str | None = None) -> Any:
        if len(self.stack) >= MAX_CALL_DEPTH:
            raise SeqError(f"definitions nested too deeply (more than {MAX_CALL_DEPTH} calls inside calls)", pos)
        if d.name in self.stack:
            chain = " -> ".join(self.stack[self.stack.index(d.name):] + [d.name])
            raise SeqError(f"recursive use of {d.name!r} ({chain}); definitions cannot call themselves",
                           pos, hint="use 'repeat' to stack layers")
        params = {p.name: p for p in d.params}
        if len(args) > len(d.params):
            raise SeqError(f"{d.name} takes {len(d.params)} argument(s), {len(args)} given", pos)
        bound: dict[str, Any] = {}
        for p, a in zip(d.params, args):
            bound[p.name] = (a, pos)
        for k, (v, kpos) in kwargs.items():
            if k not in params:
                raise SeqError(f"{d.name} has no parameter {k!r}", kpos,
                               hint="parameters: " + ", ".join(params))
            if k in bound:
                raise SeqError(f"argument {k!r} given twice", kpos)
            bound[k] = (v, kpos)
        frame = Frame(d, {}, prefix if prefix is not None else _join(caller.prefix, inst),
                      prefix if prefix is not None else _join(caller.param_prefix, inst))
        if frame.prefix:
            self.graph.layers.append((frame.prefix, d.kind, d.name))
        config = {p.name for p in d.params if isinstance(p, A.ConfigParam)}
        for p in d.params:
            if isinstance(p, A.ConfigParam) and p.name in bound:
                frame.locals[p.name] = bound[p.name][0]
        for p in d.params:
            if isinstance(p, A.TensorParam):
                if p.name not in bound:
                    raise SeqError(f"{d.name}: missing argument {p.name!r} ({p.type and _type_text(p.type)})", pos)
                v, vpos = bound[p.name]
                self.check_arg(frame, d, p, v, vpos, config)
                frame.locals[p.name] = v
        for p in d.params:
            if isinstance(p, A.ConfigParam) and p.name not in frame.locals:
                frame.locals[p.name] = self.value(frame, self.evaluate(frame, p.default))
        # the instance's arguments, for code that mirrors the file (recorded with its results below)
        args = [(p.name, frame.locals[p.name].port) for p in d.params
                if isinstance(p, A.TensorParam) and isinstance(frame.locals.get(p.name), Tensor)]
        self.stack.append(d.name)
        try:
            self.run(frame, d.body)
        finally:
            self.stack.pop()
        if not frame.returned:
            raise SeqError(f"{d.kind} {d.name!r} does not return anything", d.pos,
                           hint="end the body with 'return ...'")
        if d.returns is not None:
            self.check_returns(frame, d, frame.result)
        if frame.prefix:
            results = frame.result.items if isinstance(frame.result, TupleV) else (frame.result,)
            self.graph.instances[frame.prefix] = (args, [r.port for r in results if isinstance(r, Tensor)])
        return frame.result

    def check_arg(self, frame: Frame, d: A.Definition, p: A.TensorParam, v: Any, pos: Pos,
                  config: set[str]) -> None:
        if not isinstance(v, Tensor):
            raise SeqError(f"{d.name}: argument {p.name!r} must be a tensor {_type_text(p.type)}, "
                           f"got {describe(v)}", pos)
        want = p.type
        if len(want.dims) != v.type.rank:
            raise SeqError(f"{d.name}: argument {p.name!r} must have shape {_type_text(want)} "
                           f"(rank {len(want.dims)}), got {v.type}", pos)
        if want.dtype != v.type.dtype:
            got = f"float{v.type}" if v.type.dtype == "float" else str(v.type)   # `[B, N]` hides its dtype
            raise SeqError(f"{d.name}: argument {p.name!r} must be {want.dtype}, got {got}", pos)
        for i, (dim_expr, actual) in enumerate(zip(want.dims, v.type.shape)):
            if isinstance(dim_expr, A.Name) and dim_expr.id in config and dim_expr.id not in frame.locals:
                frame.locals[dim_expr.id] = Scalar(actual)   # bound by unification
                continue
            expected = self.dim_value(frame, dim_expr)
            if not self.same(expected, actual):
                raise SeqError(f"{d.name}: argument {p.name!r} must have shape {self.type_text(frame, want)}, "
                               f"got {v.type} (axis {i}: {show_dim(expected)} vs {show_dim(actual)})", pos)

    def dim_value(self, frame: Frame, e: A.Expr) -> sympy.Basic:
        v = self.value(frame, self.evaluate(frame, e))
        if not isinstance(v, Scalar):
            raise SeqError(f"a shape entry must be a size, got {describe(v)}", e.pos)
        self.check_dim(v.expr, e.pos, "a shape")
        return v.expr

    def type_text(self, frame: Frame, t: A.TypeExpr) -> str:
        dims = ", ".join(show_dim(self.dim_value(frame, d)) for d in t.dims)
        return ("" if t.dtype == "float" else t.dtype) + f"[{dims}]"

    def check_returns(self, frame: Frame, d: A.Definition, result: Any) -> None:
        values = result.items if isinstance(result, TupleV) else (result,)
        if len(values) != len(d.returns):
            raise SeqError(f"{d.name} declares {len(d.returns)} result(s) but returns {len(values)}", d.pos)
        for want, got in zip(d.returns, values):
            if not isinstance(got, Tensor):
                raise SeqError(f"{d.name} must return a tensor {_type_text(want)}, returns {describe(got)}",
                               want.pos)
            shape = tuple(self.dim_value(frame, x) for x in want.dims)
            if len(shape) != got.type.rank or not all(self.same(a, b) for a, b in zip(shape, got.type.shape)):
                raise SeqError(f"{d.name} declares that it returns {self.type_text(frame, want)} "
                               f"but returns {got.type}", want.pos)


def _divisors(cond: sympy.Basic) -> list[sympy.Basic]:
    """The size expressions that ``cond`` divides by (``N % (B - 2)``, ``N / (B - 2)``)."""
    found = [m.args[1] for m in cond.atoms(sympy.Mod)]
    found += [p.base for p in cond.atoms(sympy.Pow) if p.exp.is_negative]
    return [d for d in dict.fromkeys(found) if d.free_symbols]


def _type_text(t: A.TypeExpr) -> str:
    from seqdsl.frontend.printer import type_expr
    return type_expr(t)


def elaborate(prog: Program, entry: str | None = None, sizes: dict | None = None) -> Elaborated:
    """Check ``entry`` (default: the file's model) and build its layer graph."""
    values = prog.sizes(sizes)
    name = entry or prog.entry_name
    d = prog.definitions.get(name)
    if d is None:
        known = ", ".join(prog.definitions) or "none"
        # the entry is an argument (API, CLI), not a place in the file: name the file only
        raise SeqError(f"no mixer, block or model named {name!r} (defined: {known})", Pos(prog.file, 0, 0))
    el = Elaborator(prog, values)
    for req in prog.requires:
        root = Frame(d, {}, "", "")
        el.require_stmt(root, req.test, req.message, req.pos)
    for info in prog.dims.values():
        if info.derived is not None:
            num, den = sympy.fraction(sympy.together(info.derived))
            if den != 1:
                el.require(sympy.Eq(sympy.Mod(num, den), 0),
                           f"{info.name} = {info.derived} must be a whole number", info.pos)
    root = Frame(d, {}, "", "")
    for p in d.params:   # config parameters used in input shapes take their defaults here
        if isinstance(p, A.ConfigParam):
            root.locals[p.name] = el.value(root, el.evaluate(root, p.default))
    inputs = []
    for p in d.params:
        if isinstance(p, A.TensorParam):
            shape = tuple(el.dim_value(root, x) for x in p.type.dims)
            inputs.append(el.node(OpKind.INPUT, root, p.name, [], TensorType(shape, p.type.dtype), p.pos))
    result = el.call_def(None, d, inputs, {}, d.pos, "", prefix="")
    outs = list(result.items) if isinstance(result, TupleV) else [result]
    for o in outs:
        if not isinstance(o, Tensor):
            raise SeqError(f"{d.name} must return tensors, returns {describe(o)}", d.pos)
    el.graph.name = name
    el.graph.outputs = [o.port for o in outs]
    return Elaborated(d, el.graph, values, el.subs, el.constraints, el.concretized)
