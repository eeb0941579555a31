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
  with its first rows and refuses a longer one by name.

An input axis that is a fixed dim is checked at each call; a wrong size is refused with an
error naming the entry, the input, the dim, the expected and the given value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from seqdsl.ir.graph import Graph, OpKind


@dataclass
class SizePlan:
    values: dict[str, int | float]            # fixed dims and options -> value
    runtime: list[str]                        # bound from the inputs, in order of appearance
    bounds: dict[str, int] = field(default_factory=dict)     # runtime dim -> largest size a weight serves
    defaults: dict[str, int] = field(default_factory=dict)   # runtime dim -> the file's default
    fixed_by: dict[str, str] = field(default_factory=dict)   # fixed dim -> why (for messages)


def _bodies(g: Graph):
    yield g
    for n in g.nodes():
        body = n.attr("body")
        if body is not None:
            yield from _bodies(body)


def _names(expr) -> set[str]:
    return {s.name for s in sympy.sympify(expr).free_symbols}


def _weight_dims(g: Graph) -> tuple[dict[str, str], dict[str, set[str]]]:
    """dim -> the first weight whose shape uses it; and, per dim, the weights that have it
    as one whole axis read only elementwise (position tables)."""
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
                        if whole and elementwise:
                            tables.setdefault(name, set()).add(n.name)
                            used.setdefault(name, n.name)
                        else:
                            if name not in not_table:      # name the weight that fixes it
                                used[name] = n.name
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
    weights, tables = _weight_dims(graph)
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
    plan.values = {k: v for k, v in values.items() if k not in plan.runtime}
    return plan
