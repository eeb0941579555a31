"""Position tables whose rows are a prefix of the positions: built once, read for any shorter
length (issue 13, "a weight fixes N").

A learned position table ``param pos: [N, D]`` read elementwise serves every input of at most
the length it was built for with its first rows (codegen/torch/sizes.py, "bounded"). A
factorised table can do the same: ``row [N / (W·C), 1, 1, D] + col [1, W, 1, D] + chan
[1, 1, C, D]`` flattened ``"r w c d -> (r w c) d"`` gives position p the row
``p // (W·C)``, then ``(p // C) mod W``, then ``p mod C``. Because the axis that carries N is
the **outermost** of the flattened group and the others are fixed, the table built for a
length N₀ and cut to its first N rows equals the table built for N: the layout is
prefix-consistent, and the module builds it once at N₀ and serves every N ≤ N₀.

Any other layout — the N axis inner (Reformer's axial ``(rows cols)`` with cols = N / rows),
two axes that carry N, an op other than elementwise arithmetic and that flattening between
the weight and its reader — changes every position's vector with N, and keeps refusing by
name.

Pure IR: read by codegen/torch/sizes.py (which dims a module fixes), codegen/decode/plan.py
and seqdsl/analysis/decode_rules.py (the table's nodes are computed whole, its flattened
end read at the step's position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy

from seqdsl.ir.graph import Graph, Node, OpKind


@dataclass(frozen=True)
class PrefixTables:
    """For one dim: the nodes computed whole at the built size (weights and the elementwise
    work on them) and the flattened ends (node id -> the axis of exactly the dim)."""

    nodes: frozenset[int] = frozenset()
    ends: dict[int, int] = field(default_factory=dict)
    weights: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)     # weight name -> why it is not prefix-consistent


def _uses(expr, n: sympy.Symbol) -> bool:
    return n in sympy.sympify(expr).free_symbols


def _n_axes(shape, n: sympy.Symbol) -> list[int]:
    return [i for i, d in enumerate(shape) if _uses(d, n)]


def _readers(g: Graph) -> dict[int, list[Node]]:
    out: dict[int, list[Node]] = {}
    for node in g.nodes():
        for p in node.inputs:
            out.setdefault(p.node, []).append(node)
    return out


_TOKEN = re.compile(r"\([^()]*\)|\S+")


def _groups(side: str) -> list[list[str]] | None:
    """``"r w c d"`` / ``"(r w c) d"`` -> [[r], [w], ...] / [[r, w, c], [d]]; None for ellipses,
    numbers or nested groups."""
    out = []
    for tok in _TOKEN.findall(side):
        names = tok[1:-1].split() if tok.startswith("(") else [tok]
        if not names or not all(x.isidentifier() for x in names):
            return None
        out.append(names)
    return out


def flatten_axis(g: Graph, node: Node, axis: int, n: sympy.Symbol) -> int | None | str:
    """Where a rearrange puts input ``axis`` (the one carrying n): the output axis (of size
    exactly n) when it flattens that axis outermost with fixed ones; the same axis when the
    rearrange leaves it alone (then still a table); a reason string otherwise."""
    pattern = node.attr("pattern")
    x = g.type_of(node.input("x"))
    if pattern is None or "->" not in pattern:
        return "an expand or permutation of the table"
    left, right = (_groups(s) for s in pattern.split("->"))
    if left is None or right is None or any(len(grp) != 1 for grp in left) or len(left) != x.rank:
        return f"the rearrange {pattern!r}"
    name = left[axis][0]
    size = {grp[0]: sympy.sympify(d) for grp, d in zip(left, x.shape)}
    for i, grp in enumerate(right):
        if name not in grp:
            continue
        if grp[0] != name:
            return (f"{pattern!r} puts the axis of {size[name]} inside ({' '.join(grp)}): a position's row "
                    f"would change with {n}")
        if any(_uses(size[o], n) for o in grp[1:]):
            return f"{pattern!r} flattens two axes that depend on {n}"
        total = sympy.simplify(sympy.Mul(*[size[o] for o in grp]))
        if len(grp) == 1:
            return i if total == size[name] else f"the rearrange {pattern!r}"
        return i if sympy.simplify(total - n) == 0 else f"{pattern!r} flattens into {total} rows, not {n}"
    return f"the rearrange {pattern!r}"


def prefix_tables(g: Graph, n: sympy.Symbol) -> PrefixTables:
    """The weights of ``g`` with exactly one axis that is a multiple of ``n`` (n / k, k fixed;
    or n itself) whose readers — elementwise arithmetic with tensors free of ``n``, then a
    prefix-consistent flattening — end in tensors with an axis of exactly ``n`` read
    elementwise; every node on the way is computed whole at the built size."""
    readers = _readers(g)
    nodes: set[int] = set()
    ends: dict[int, int] = {}
    weights, refused = [], {}
    for w in g.nodes():
        if w.kind not in (OpKind.PARAM, OpKind.BUFFER):
            continue
        axes = _n_axes(w.out.shape, n)
        if len(axes) != 1:
            continue
        d = sympy.sympify(w.out.shape[axes[0]])
        if d == n or _uses(sympy.simplify(d / n), n):
            continue                     # a plain [N, D] table (sizes.py's own rule), or not N / k
        why = _follow(g, w, axes[0], n, readers, nodes_here := {w.id}, ends_here := {})
        if why is None:
            nodes |= nodes_here
            ends.update(ends_here)
            weights.append(w.name)
        else:
            refused[w.name] = why
    return PrefixTables(frozenset(nodes), ends, tuple(weights), refused)


def _follow(g: Graph, start: Node, axis: int, n, readers, nodes: set[int], ends: dict[int, int]) -> str | None:
    """Walk from ``start`` (its n-axis at ``axis``) to the flattened ends; None when every
    path is prefix-consistent, else why not."""
    todo = [(start, axis)]
    while todo:
        node, ax = todo.pop()
        for r in readers.get(node.id, []):
            if r.kind == OpKind.BINARY:
                if r.attr("scalar") is not None and _uses(r.attr("scalar"), n):
                    return f"{r.name} uses {n} as a number"
                others = [g.type_of(p) for p in r.inputs if p.node != node.id]
                if any(_n_axes(t.shape, n) for t in others) and not all(p.node in nodes or p.node == node.id
                                                                        for p in r.inputs):
                    return f"{r.name} combines it with another tensor over {n}"
                out_axes = _n_axes(r.out.shape, n)
                if len(out_axes) != 1 or sympy.sympify(r.out.shape[out_axes[0]]) != sympy.sympify(node.outs[0].shape[ax]):
                    return f"{r.name} broadcasts it to {r.out}"
                if r.id not in nodes:
                    nodes.add(r.id)
                    todo.append((r, out_axes[0]))
            elif r.kind == OpKind.REARRANGE and r.attr("expand") is not None:
                if sympy.sympify(r.out.shape[ax]) != sympy.sympify(node.outs[0].shape[ax]):
                    return f"{r.name} broadcasts it to {r.out}"
                nodes.add(r.id)                                  # a broadcast of the other axes
                todo.append((r, ax))
            elif r.kind == OpKind.CONCAT:
                if r.attr("axis") % r.out.rank == ax:
                    return f"{r.name} concatenates along its {n} axis"
                for p in r.inputs:                     # the others: tables too, or broadcasts of fixed ones
                    src = g.node(p.node)
                    if p.node in nodes or p.node == node.id:
                        continue
                    if not _n_axes(g.type_of(p).shape, n):
                        continue
                    if src.kind == OpKind.REARRANGE and src.attr("expand") is not None and \
                            not _n_axes(g.type_of(src.input("x")).shape, n):
                        nodes.add(src.id)
                        continue
                    return f"{r.name} concatenates it with another tensor over {n}"
                if r.id not in nodes:
                    nodes.add(r.id)
                    todo.append((r, ax))
            elif r.kind == OpKind.REARRANGE:
                where = flatten_axis(g, r, ax, n)
                if isinstance(where, str):
                    return where
                nodes.add(r.id)
                if sympy.sympify(r.out.shape[where]) == n:
                    ends[r.id] = where
                    bad = [x for x in readers.get(r.id, []) if x.kind != OpKind.BINARY]
                    if bad:
                        return f"its rows are read by {bad[0].name} ({bad[0].kind.value}), not elementwise"
                else:
                    todo.append((r, where))
            else:
                return f"{r.name} ({r.kind.value}) reads it"
    return None if ends else "it is never flattened to one row per position"
