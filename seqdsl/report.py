"""Plain-text reports printed by the CLI (stable enough for golden files)."""

from __future__ import annotations

import sympy

from seqdsl.api import Checked
from seqdsl.fold import Folding, fold_graph, merge_lines, relative, unit_of
from seqdsl.ir.graph import Graph, OpKind
from seqdsl.ir.types import show_dim


def _expr(e: sympy.Basic) -> str:
    return str(e)


def _params_under(g: Graph, prefix: str) -> sympy.Expr:
    """The trained weights under ``prefix`` (a sparsity pattern's zeros left out, as the total)."""
    from seqdsl.analysis.params import masked_zeros, nonzero_param_count
    total = -masked_zeros(g, prefix)
    for n in g.nodes(OpKind.PARAM):
        if n.name.startswith(prefix + "."):
            total += n.out.numel()
    for n in g.nodes():
        body = n.attr("body")
        if body is not None and n.name.startswith(prefix + "."):
            total += n.attr("copies", 1) * nonzero_param_count(body)
    return sympy.expand(total)


def check_report(c: Checked, expand: bool = False) -> str:
    """What ``seqdsl check`` prints. Identical repeat iterations are folded into one line
    per layer (``layers.{0,1,3..11}.h3_block ×10``, parameters per instance and in all)
    unless ``expand``; see :mod:`seqdsl.fold`."""
    lines = [f"ok: {c.program.file}", f"entry: {c.kind} {c.entry}"]
    known = {k: v for k, v in c.sizes.items()}
    lines.append("sizes: " + (", ".join(f"{k}={v}" for k, v in known.items()) or "none"))
    lines.append("inputs:")
    for name, t in c.inputs:
        lines.append(f"  {name}: {t}")
    lines.append("outputs:")
    for t in c.outputs:
        lines.append(f"  {t}")
    subs = {sympy.Symbol(k, positive=True, integer=True): v for k, v in c.sizes.items()}
    subs.update({sympy.Symbol(k, real=True): v for k, v in c.sizes.items()})

    def at_sizes(e: sympy.Expr) -> str:
        value = sympy.sympify(e).subs(subs)
        return f" = {int(value):,}" if value.is_Integer and str(value) != _expr(e) else ""

    value = c.param_count.subs(subs)
    count = _expr(c.param_count)
    lines.append(f"parameters: {count}" + (f" = {value}" if value.is_number and str(value) != count else ""))
    stored = c.stored_param_count
    if stored is not None and sympy.expand(stored - c.param_count) != 0:
        lines.append(f"  (the trained non-zeros; stored dense with the sparsity masks' zeros: {_expr(stored)}"
                     f"{at_sizes(stored)})")
    if c.constraints:
        lines.append("constraints (checked when sizes are set):")
        for cond, msg, _pos in c.constraints:
            lines.append(f"  {cond}  ({msg})")
    folding = Folding() if expand else fold_graph(c.graph)[0]
    folded = [g for g in folding.groups if g.count > 1
              and any(folding.group_of(p) is not None and folding.group_of(p)[1] is g for p, _, _ in c.graph.layers)]
    lines.append("layers:" + (f" (identical repeat iterations folded: {sum(g.count - 1 for g in folded)} not "
                              "listed, --expand lists all)" if folded else ""))
    if not c.graph.layers:
        lines.append("  (none: the entry uses primitives only)")
    paths = [p for p, _, _ in c.graph.layers]
    for path, kind, name in c.graph.layers:
        depth = sum(1 for other in paths if path.startswith(other + "."))
        indent = "  " + "  " * min(depth, 6)
        params = _params_under(c.graph, path)
        found = folding.group_of(path)
        if found is None or found[1].count == 1:
            lines.append(f"{indent}{path}: {kind} {name}  [params {_expr(params)}]")
            continue
        unit, group = found
        if unit != group.first:
            continue
        shown = group.show(path)
        if any(path.startswith(o + ".") and unit_of(o) == unit for o in paths):
            # inside a folded layer: the count is the enclosing line's
            lines.append(f"{indent}{shown}: {kind} {name}  [params {_expr(params)} each]")
            continue
        total = sympy.expand(group.count * params)
        in_all = at_sizes(total)[3:] or _expr(total)
        note = f"; {group.note}" if group.note else ""
        lines.append(f"{indent}{shown} ×{group.count}: {kind} {name}  [params {_expr(params)}{at_sizes(params)} each, "
                     f"{in_all} in all{note}]")
    mixers = _mixers(c.graph, "")
    lines.append(f"mixers: {len(mixers)}")
    rows: list[tuple[str, list[str]]] = []        # (key, the lines of every instance)
    where: dict[str, int] = {}
    for path, g, n in mixers:
        shapes = ", ".join(f"{p.role}={g.type_of(p)}" for p in n.inputs if p.role in ("q", "k", "v"))
        text = f"{n.spec}  ({shapes} -> {n.out})"
        found = folding.group_of(path)
        if found is None or found[1].count == 1:
            rows.append((path, [f"{path}: {text}"]))
            continue
        unit, group = found
        key = group.label + "\0" + relative(path, unit)
        if key not in where:
            where[key] = len(rows)
            rows.append((key, []))
        rows[where[key]][1].append(f"{group.show(path.replace(unit.path, group.first.path, 1))} "
                                   f"×{group.count}: {text}")
    for _key, texts in rows:
        merged = merge_lines(texts) if len(texts) > 1 else texts[0]
        for line in [merged] if merged is not None else texts:
            lines.append(f"  {line}")
    return "\n".join(lines)


def _mixers(g: Graph, prefix: str) -> list:
    """(path, graph, node) of every mix, inside function bodies too (path through the body)."""
    out = []
    for n in g.nodes():
        if n.kind == OpKind.MIX:
            out.append((f"{prefix}{n.name}", g, n))
        body = n.attr("body")
        if body is not None:
            out += _mixers(body, f"{prefix}{n.name}/{body.name.split('.')[-1]}/")
    return out


def builtins_report() -> str:
    from seqdsl.check.builtins import REGISTRY
    from seqdsl.check.signature import usage

    groups: dict[str, list] = {}
    for b in REGISTRY.values():
        groups.setdefault(b.group, []).append(b)
    lines = []
    for group in ("mix", "mask", "score", "bias", "feature", "kernel", "layer", "elementwise", "shape", "init"):
        lines.append(f"{group}:")
        for b in sorted(groups.get(group, []), key=lambda b: b.name):
            doc = b.doc.splitlines()[0] if b.doc else ""
            lines.append(f"  {usage(b)}")
            if doc:
                lines.append(f"      {doc}")
    return "\n".join(lines)


__all__ = ["check_report", "builtins_report", "show_dim"]
