"""Plain-text reports printed by the CLI (stable enough for golden files)."""

from __future__ import annotations

import sympy

from seqdsl.api import Checked
from seqdsl.ir.graph import Graph, OpKind
from seqdsl.ir.types import show_dim


def _expr(e: sympy.Basic) -> str:
    return str(e)


def _params_under(g: Graph, prefix: str) -> sympy.Expr:
    total = sympy.Integer(0)
    for n in g.nodes(OpKind.PARAM):
        if n.name.startswith(prefix + "."):
            total += n.out.numel()
    for n in g.nodes():
        body = n.attr("body")
        if body is not None and n.name.startswith(prefix + "."):
            from seqdsl.ir.graph import param_count
            total += n.attr("copies", 1) * param_count(body)
    return sympy.expand(total)


def check_report(c: Checked) -> str:
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
    value = c.param_count.subs(subs)
    count = _expr(c.param_count)
    lines.append(f"parameters: {count}" + (f" = {value}" if value.is_number and str(value) != count else ""))
    if c.constraints:
        lines.append("constraints (checked when sizes are set):")
        for cond, msg, _pos in c.constraints:
            lines.append(f"  {cond}  ({msg})")
    lines.append("layers:")
    if not c.graph.layers:
        lines.append("  (none: the entry uses primitives only)")
    paths = [p for p, _, _ in c.graph.layers]
    for path, kind, name in c.graph.layers:
        depth = sum(1 for other in paths if path.startswith(other + "."))
        lines.append(f"  {'  ' * min(depth, 6)}{path}: {kind} {name}  [params {_expr(_params_under(c.graph, path))}]")
    mixers = _mixers(c.graph, "")
    lines.append(f"mixers: {len(mixers)}")
    for path, g, n in mixers:
        shapes = ", ".join(f"{p.role}={g.type_of(p)}" for p in n.inputs if p.role in ("q", "k", "v"))
        lines.append(f"  {path}: {n.spec}  ({shapes} -> {n.out})")
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
