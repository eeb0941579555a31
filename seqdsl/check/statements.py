"""The checker's statements: a body run in order, assignments, ``return``, ``if``, ``param``,
``require`` and the unrolling of ``repeat`` (recorded in ``graph.repeats``, so that generated
code can loop again); and a definition elaborated as a function on its own graph (MoE
experts, fixed-point cells, recurrent steps). Mixed into :class:`seqdsl.check.elaborate.Elaborator`,
which evaluates the expressions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy

from seqdsl.check import builtins as B
from seqdsl.check.values import Func, Scalar, Tensor, TupleV, describe
from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import ast as A
from seqdsl.frontend.limits import MAX_STATEMENTS
from seqdsl.ir.graph import Graph, OpKind
from seqdsl.ir.types import TensorType

MAX_UNROLL = 4096


@dataclass
class Frame:
    definition: A.Definition
    locals: dict[str, Any]
    prefix: str              # layer path of the nodes made here
    param_prefix: str        # layer path of the parameters (no iteration index when shared)
    result: Any = None
    returned: bool = False
    loop_outer: set[str] | None = None   # names bound before the innermost repeat


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


class Statements:
    """Statements of a definition's body (see the module docstring)."""

    def run(self, frame: Frame, body: tuple[A.Stmt, ...]) -> None:
        for s in body:
            if frame.returned:
                raise SeqError("statement after 'return' is never reached", s.pos)
            self.statements += 1
            if self.statements > MAX_STATEMENTS:    # in total: nested repeats multiply
                raise SeqError(f"the program unrolls to more than {MAX_STATEMENTS} statements", s.pos,
                               hint="nested repeats and calls multiply; use 'shared' or fewer layers")
            self.stmt(frame, s)

    def stmt(self, frame: Frame, s: A.Stmt) -> None:
        match s:
            case A.Assign(targets=targets, value=e):
                # A fresh name names the layer it computes (q = linear(x, D) -> "q"); a rebinding
                # (x = block(x)) leaves the callee's name.
                fresh = len(targets) == 1 and (targets[0] not in frame.locals or (
                    frame.loop_outer is not None and targets[0] not in frame.loop_outer))
                hint = targets[0] if fresh else None
                v = self.value(frame, self.evaluate(frame, e, name=hint))
                if len(targets) == 1:
                    frame.locals[targets[0]] = v
                    return
                items = v.items if isinstance(v, TupleV) else None
                if items is None or len(items) != len(targets):
                    got = len(items) if items is not None else 1
                    raise SeqError(f"cannot unpack {got} value(s) into {len(targets)} names", s.pos)
                for t, item in zip(targets, items):
                    frame.locals[t] = item
            case A.Return(values=values):
                vals = [self.value(frame, self.evaluate(frame, v)) for v in values]
                frame.result = vals[0] if len(vals) == 1 else TupleV(tuple(vals))
                frame.returned = True
            case A.Repeat():
                self.repeat(frame, s)
            case A.If(test=t, body=body, orelse=orelse):
                self.run(frame, body if self.truth(self.value(frame, self.evaluate(frame, t)), t.pos) else orelse)
            case A.ParamStmt(name=n, type=t, init=init):
                shape = tuple(self.dim_value(frame, d) for d in t.dims)
                if init is None:
                    init_v = B.default_init()
                else:
                    init_v = B.as_init(self.value(frame, self.evaluate(frame, init)), init.pos)
                frame.locals[n] = self.param(frame, n, shape, init_v, s.pos, trainable=init_v.trainable)
            case A.Require(test=t, message=msg):
                self.require_stmt(frame, t, msg, s.pos)

    def require_stmt(self, frame: Frame, t: A.Expr, msg: str | None, pos: Pos) -> None:
        text = msg or f"requirement failed: {_expr_text(t)}"
        if isinstance(t, A.BinOp) and t.op in ("==", "!=", "<", "<=", ">", ">="):
            a = self.value(frame, self.evaluate(frame, t.left))
            b = self.value(frame, self.evaluate(frame, t.right))
            if isinstance(a, Scalar) and isinstance(b, Scalar):
                rel = {"==": sympy.Eq, "!=": sympy.Ne, "<": sympy.Lt, "<=": sympy.Le,
                       ">": sympy.Gt, ">=": sympy.Ge}[t.op](a.expr, b.expr)
                self.require(rel, text, pos)
                return
        if not self.truth(self.value(frame, self.evaluate(frame, t)), pos):
            raise SeqError(text, pos)

    def repeat(self, frame: Frame, s: A.Repeat) -> None:
        count_v = self.value(frame, self.evaluate(frame, s.count))
        if not isinstance(count_v, Scalar):
            raise SeqError(f"repeat needs a count, got {describe(count_v)}", s.count.pos)
        count = self.concrete_int(count_v.expr, s.count.pos, "the repeat count")
        if count < 0 or count > MAX_UNROLL:
            raise SeqError(f"repeat count {count} is out of range (0..{MAX_UNROLL})", s.count.pos)
        ret = _first_return(s.body)
        if ret is not None:
            raise SeqError("'return' inside 'repeat' is not allowed", ret.pos)
        scope = self.instance(frame, "layers")
        saved = frame.prefix, frame.param_prefix
        saved_outer = frame.loop_outer
        frame.loop_outer = set(frame.locals)
        if s.shared:
            self.shared_depth += 1
        iterations = []
        try:
            for i in range(count):
                frame.prefix = _join(saved[0], scope, str(i))
                frame.param_prefix = _join(saved[1], scope) if s.shared else _join(saved[1], scope, str(i))
                if s.var:
                    frame.locals[s.var] = Scalar(sympy.Integer(i))
                before = {k: v.port for k, v in frame.locals.items() if isinstance(v, Tensor)}
                self.run(frame, s.body)
                after = {k: v.port for k, v in frame.locals.items() if isinstance(v, Tensor)}
                # the tensors the iteration rebinds: (name, value before, value after)
                iterations.append([(k, before.get(k), port) for k, port in after.items() if before.get(k) != port])
            self.graph.repeats.append((_join(saved[0], scope), count, bool(s.shared), iterations))
        finally:
            frame.prefix, frame.param_prefix = saved
            frame.loop_outer = saved_outer
            if s.shared:
                self.shared_depth -= 1

    # ---- sub-graphs for higher-order builtins ------------------------------------
    def body_graph(self, fn: Func, arg_types: list[TensorType], pos: Pos, name: str) -> tuple[Graph, list]:
        """Elaborate a user definition as a function on its own graph (MoE expert, DEQ cell)."""
        d = fn.definition
        if d is None:
            raise SeqError(f"{fn.name!r} is a builtin; pass a mixer or block defined in the file", pos)
        saved = self.graph, self.params, self.used
        self.graph, self.params, self.used = Graph(name), {}, {}
        try:
            frame = Frame(d, {}, "", "")
            tensor_params = [p for p in d.params if isinstance(p, A.TensorParam)]
            if len(tensor_params) != len(arg_types):
                raise SeqError(f"{d.name} must take {len(arg_types)} tensor argument(s) here, "
                               f"it takes {len(tensor_params)}", pos)
            args = []
            for p, t in zip(tensor_params, arg_types):
                args.append(self.node(OpKind.INPUT, frame, p.name, [], t, p.pos))
            result = self.call_def(None, d, args, {}, pos, "", prefix="")
            outs = list(result.items) if isinstance(result, TupleV) else [result]
            for o in outs:
                if not isinstance(o, Tensor):
                    raise SeqError(f"{d.name} must return tensors here, returns {describe(o)}", pos)
            self.graph.outputs = [o.port for o in outs]
            return self.graph, [o.type for o in outs]
        finally:
            self.graph, self.params, self.used = saved


def _first_return(body: tuple[A.Stmt, ...]) -> A.Return | None:
    """The first 'return' in a body, in its nested 'if's and 'repeat's too."""
    for s in body:
        match s:
            case A.Return():
                return s
            case A.If(body=then, orelse=orelse):
                found = _first_return(then) or _first_return(orelse)
            case A.Repeat(body=inner):
                found = _first_return(inner)
            case _:
                found = None
        if found is not None:
            return found
    return None


def _expr_text(e: A.Expr) -> str:
    from seqdsl.frontend.printer import expr
    return expr(e)
