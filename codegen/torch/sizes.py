"""Which sizes a generated module fixes, and which it reads from its inputs at each call.

A module is a model, not a snapshot of one size. When it is generated, every dim of the
file is in one of three states:

- **fixed**: its value is written into the source. A dim is fixed when the user passed it
  to ``load``/``compile``, when a weight's shape depends on it (``D`` of ``linear(x, D)``),
  or when the graph's structure depends on its value (a repeat count, an ``if``, an
  integer option: the elaborator records these as *concretized*). Dims that no input
  carries (options, ``L``) are fixed too.
- **bound at call time**: a dim that an input carries as a whole axis (``N`` of
  ``tokens: [B, N]``) and that nothing above fixes. The forward reads it from the input,
  and everything derived from it (scales, slice bounds, masks, the algorithm) is computed
  for that size.
- **bounded**: a dim bound at call time that a position table also has as an axis
  (``param pos: [N, D]`` read only by elementwise ops): the table serves any shorter input
  with its first rows and refuses a longer one by name. A factorised table whose axis is
  N / k, combined elementwise with fixed tables and flattened with that axis outermost
  (``"r w c d -> (r w c) d"``), is prefix-consistent too (seqdsl/ir/tables.py): it is built
  whole at the bound and its first N rows are read (``[:N]`` after the flattening).

An input axis that is a fixed dim is checked at each call; a wrong size is refused with an
error naming the entry, the input, the dim, the expected and the given value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy

from codegen.source import RESERVED, comment, literal
from seqdsl.ir.graph import Graph, OpKind
from seqdsl.ir.tables import PrefixTables, prefix_tables
from seqdsl.ir.types import show_dim


@dataclass
class SizePlan:
    values: dict[str, int | float]            # fixed dims and options -> value
    runtime: list[str]                        # bound from the inputs, in order of appearance
    bounds: dict[str, int] = field(default_factory=dict)     # runtime dim -> largest size a weight serves
    defaults: dict[str, int] = field(default_factory=dict)   # runtime dim -> the file's default
    fixed_by: dict[str, str] = field(default_factory=dict)   # fixed dim -> why (for messages)
    prefix: dict[str, PrefixTables] = field(default_factory=dict)   # bounded dim -> its factorised tables


def _bodies(g: Graph):
    yield g
    for n in g.nodes():
        body = n.attr("body")
        if body is not None:
            yield from _bodies(body)


def _names(expr) -> set[str]:
    return {s.name for s in sympy.sympify(expr).free_symbols}


def _weight_dims(g: Graph, prefix: dict[str, PrefixTables] | None = None) -> tuple[dict[str, str], dict[str, set[str]]]:
    """dim -> the first weight whose shape uses it; and, per dim, the weights that have it
    as one whole axis read only elementwise (position tables), or that are part of a
    prefix-consistent factorised table (``prefix``, of the top graph)."""
    prefix = prefix or {}
    used: dict[str, str] = {}
    tables: dict[str, set[str]] = {}
    not_table: set[str] = set()
    for graph in _bodies(g):
        readers: dict[int, list] = {}
        for n in graph.nodes():
            for p in n.inputs:
                readers.setdefault(p.node, []).append(n)
        for n in graph.nodes():
            if n.kind in (OpKind.PARAM, OpKind.BUFFER):
                shape = [sympy.sympify(d) for d in n.out.shape]
                elementwise = all(r.kind == OpKind.BINARY for r in readers.get(n.id, []))
                for d in shape:
                    for name in _names(d):
                        whole = d.is_Symbol and sum(1 for x in shape if name in _names(x)) == 1
                        factorised = graph is g and name in prefix and n.id in prefix[name].nodes
                        if (whole and elementwise) or factorised:
                            tables.setdefault(name, set()).add(n.name)
                            used.setdefault(name, n.name)
                        else:
                            if name not in not_table:      # name the weight that fixes it (and why)
                                why = prefix[name].refused.get(n.name) if graph is g and name in prefix else None
                                used[name] = f"{n.name}: {why}" if why else n.name
                            not_table.add(name)
            elif n.kind == OpKind.HASH:      # its rotation buffer is [last dim of x, buckets / 2]
                for name in _names(graph.type_of(n.input("x")).shape[-1]):
                    used.setdefault(name, f"{n.name}.rotation")
                    not_table.add(name)
    return used, {k: v for k, v in tables.items() if k not in not_table}


def plan_sizes(graph: Graph, values: dict, explicit: set[str] | None,
               concretized: set[str] | None = None) -> SizePlan:
    """Split the dims of ``graph`` into fixed and bound-at-call-time (see the module
    docstring). ``explicit=None`` fixes every dim that has a value (the sizes of one call)."""
    values = dict(values)
    concretized = set(concretized or ())
    candidates: list[str] = []
    for i in graph.inputs:
        for d in i.out.shape:
            d = sympy.sympify(d)
            if d.is_Symbol and d.name not in candidates:
                candidates.append(d.name)
    symbols = {sympy.sympify(d).name: sympy.sympify(d) for i in graph.inputs for d in i.out.shape
               if sympy.sympify(d).is_Symbol}
    prefix = {name: prefix_tables(graph, sym) for name, sym in symbols.items()}
    weights, tables = _weight_dims(graph, prefix)
    plan = SizePlan(values={}, runtime=[])
    for name in candidates:
        if name not in values:
            plan.runtime.append(name)       # no value anywhere: read from the inputs, as always
            continue
        if explicit is None or name in explicit:
            plan.fixed_by[name] = "given when the module was built"
        elif name in concretized:
            plan.fixed_by[name] = "the structure of the model depends on it"
        elif name in weights and name not in tables:
            plan.fixed_by[name] = f"the weights were built for it ({weights[name]})"
        else:
            plan.runtime.append(name)
            plan.defaults[name] = int(values[name])
            if name in tables:
                plan.bounds[name] = int(values[name])
                if prefix[name].nodes:
                    plan.prefix[name] = prefix[name]
    plan.values = {k: v for k, v in values.items() if k not in plan.runtime}
    return plan


def in_table(plan: SizePlan, nid: int) -> bool:
    """Whether node ``nid`` (of the top graph) computes a factorised position table whole."""
    return any(nid in pt.nodes for pt in plan.prefix.values())


def table_end(w, node) -> None:
    """After the flattening that ends a factorised position table (built whole at the bound):
    its first N rows, or in a decoding step the rows of the step's positions."""
    for name, pt in w.sizes.plan.prefix.items():
        if node.id in pt.ends:
            var, n = w.var[(node.id, 0)], w.sizes.code(sympy.Symbol(name))
            rows = f"rt.seq_rows({n})" if w._seq(node) else f":{n}"
            index = ", ".join([":"] * pt.ends[node.id] + [rows])
            w.body.append(f"        {var} = {var}[{index}]  # the first {name} rows of the table built for "
                          f"{name} = {w.sizes.plan.bounds[name]}")


# ---- sizes as generated source ---------------------------------------------------------------

class SizeCode:
    """Sizes as Python source: numbers where known, else dims bound from the inputs."""

    def __init__(self, values: dict[str, int], runtime_dims: set[str], plan: SizePlan | None = None):
        self.values = values
        self.runtime = runtime_dims
        self.plan = plan or SizePlan(values, sorted(runtime_dims))
        # the Python name of each dim read at call time (a dim named like a builtin gets a suffix)
        self.pyname = {d: d + "_" if d in RESERVED or not d.isidentifier() else d for d in runtime_dims}

    def init_code(self, e) -> str:
        """``e`` in ``__init__``, where a bounded dim (a position table's length) is its bound."""
        e = sympy.sympify(e).xreplace({s: sympy.Integer(self.plan.bounds[s.name]) for s in
                                       sympy.sympify(e).free_symbols if s.name in self.plan.bounds})
        v = self.subs(e)
        if not v.is_number:
            late = ", ".join(sorted(s.name for s in v.free_symbols))
            raise ValueError(f"a weight's shape depends on {late}, which the module reads from its inputs at "
                             f"each call; give {late} a value (load(..., {late}=...)) or take it out of the shape")
        return self.code(v)

    def subs(self, e) -> sympy.Expr:
        e = sympy.sympify(e)
        return e.xreplace({s: sympy.Integer(self.values[s.name]) if s.name in self.values and
                           float(self.values[s.name]).is_integer() else sympy.Float(self.values[s.name])
                           for s in e.free_symbols if s.name in self.values})

    def code(self, e) -> str:
        v = self.subs(e)
        if v.is_Integer:
            return str(int(v))
        if v.is_number:
            return repr(float(v))
        unknown = {s.name for s in v.free_symbols} - self.runtime
        if unknown:
            raise ValueError(f"size {e} depends on {', '.join(sorted(unknown))}, which has no value")
        v = v.xreplace({s: sympy.Symbol(self.pyname[s.name], **s.assumptions0) for s in v.free_symbols})
        text = sympy.pycode(v, fully_qualified_modules=True)
        return f"int({text})" if v.is_integer and not v.is_Symbol else text

    def scalar(self, e) -> str:
        """A float argument (a scale, a cap, a rate): a literal, or the expression of the
        dims read at call time."""
        v = self.subs(e)
        if v.is_number:
            return literal(float(v))
        return f"float({self.code(v)})"

    def number(self, e) -> float | int:
        v = self.subs(e)
        if not v.is_number:
            raise ValueError(f"{e} must be known when the module is generated")
        return int(v) if v.is_Integer else float(v)


def size_check_lines(w, constraints) -> list[str]:
    """``rt.require`` lines for the input axes that are expressions of dims read at call
    time, and for the file's requirements that depend on those dims."""
    out, seen = [], set()
    for i in w.g.inputs:
        for axis, d in enumerate(i.out.shape):
            d = sympy.sympify(d)
            if not d.is_Symbol and {s.name for s in d.free_symbols} & w.sizes.runtime:
                text = f"{w.var[(i.id, 0)]}.shape[{axis}] == {w.sizes.code(d)}"
                msg = f"input {i.name} must have {show_dim(d)} entries on axis {axis}"
                out.append(f"        rt.require({text}, {literal(msg)})")
    for cond, message, pos in constraints:
        cond = sympy.sympify(cond)
        names = {s.name for s in cond.free_symbols}
        if not names & w.sizes.runtime or names - w.sizes.runtime - set(w.sizes.values):
            continue
        value = w.sizes.subs(cond)
        if value in (sympy.true, sympy.false):
            continue
        value = value.xreplace({s: sympy.Symbol(w.sizes.pyname[s.name], **s.assumptions0) for s in value.free_symbols})
        code = sympy.pycode(value, fully_qualified_modules=True)
        line = f"        rt.require({code}, {literal(comment(message, 500))}, {literal(comment(pos.file, 500))}, " \
               f"{int(pos.line)}, {int(pos.col)})"
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def decode_limit_lines(w, constraints) -> list[str]:
    """``DECODE_LIMITS`` of the entry class: the file's requirements that bound the sequence dim
    that decoding grows from above (``N <= Nmax``, and any whose solution set in that dim, the
    other sizes fixed, is bounded above), as (the largest length that satisfies it, message,
    file, line, col). ``require`` lines are not checked while decoding (the call's length is
    not the sequence's); once the sequence grows past such a limit no longer length satisfies
    the requirement again, so prefill and step refuse it at the length reached, with the
    message a forward at that length gives. Divisibility and lower bounds are not limits: a
    longer sequence satisfies them again."""
    plan = getattr(w, "decoding", None)
    if plan is None or not plan.ok or getattr(w, "no_step", None) or plan.seq not in w.sizes.runtime:
        return []
    limits = []
    for cond, message, pos in constraints:
        value = w.sizes.subs(sympy.sympify(cond))
        if value in (sympy.true, sympy.false) or {s.name for s in value.free_symbols} != {plan.seq}:
            continue
        (sym,) = value.free_symbols
        try:
            solved = sympy.solveset(value, sym, sympy.S.Reals)
            sup = solved.sup
        except (NotImplementedError, AttributeError, TypeError, ValueError):
            continue          # not an interval in the dim (a divisibility): a longer length may satisfy it
        if not sup.is_finite:
            continue
        limit = int(sympy.floor(sup))
        if solved.contains(sympy.Integer(limit)) is not sympy.true:
            limit -= 1
        entry = (limit, comment(message, 500), comment(pos.file, 500), int(pos.line), int(pos.col))
        if entry not in limits:
            limits.append(entry)
    if not limits:
        return []
    return [f"    DECODE_LIMITS = {literal(tuple(limits))}   # the largest {plan.seq} each bounding require allows"]


def shape_spec(shape, sizes: SizeCode) -> tuple:
    """Per axis: a number (fixed), ``(dim, number)`` (fixed, named), a dim name (read at
    each call) or ``(expression, None)`` (checked after the binding, by a generated line)."""
    out = []
    for d in shape:
        d = sympy.sympify(d)
        v = sizes.subs(d)
        if v.is_Integer:
            out.append((show_dim(d), int(v)) if d.free_symbols else int(v))
        elif d.is_Symbol:
            out.append(d.name)
        else:
            out.append((show_dim(d), None))
    return tuple(out)


def runtime_dims(g: Graph, sizes: SizeCode) -> dict[str, tuple[int, int]]:
    """Dims without a value, bound from the first input axis that is exactly that dim."""
    found: dict[str, tuple[int, int]] = {}
    for i in g.inputs:
        for axis, d in enumerate(i.out.shape):
            d = sympy.sympify(d)
            if d.is_Symbol and d.name in sizes.runtime and d.name not in found:
                found[d.name] = (i.id, axis)
    return found


def value_of(name: str, v) -> int | float:
    v = sympy.sympify(v)
    if v.is_Integer:
        return int(v)
    if not (v.is_number and v.is_real):
        raise ValueError(f"{name} = {v} is not a real number")
    value = float(v)
    if not math.isfinite(value):
        raise ValueError(f"{name} = {v} is not a finite number")
    return value
