"""Which layers of a generated module can run with the sequence split over ranks.

Read from the IR, as ``codegen/torch/packing.py`` reads it for packed rows, whose rules
this reuses: a layer that reads across the sequence axis of a *sharded* tensor is
refused unless it has a distributed form. A tensor is sharded when it derives from an
entry input along the sequence axis (the axes of packed rows: axis 1 of ``tokens: [B, N]``,
−2 of ``x: [B, .., N, D]``); everything else (weights, a filter or a position table over
the whole length) is computed whole on every rank, with the global N, and needs nothing.

Where packed rows and sequence parallelism differ:

- mixers over the sequence: every structural mask is served (ring attention evaluates it
  at global positions, absolute or not); content-based masks and given scores are refused;
- positions and the length as a number: global N makes them right (a Hyena filter over N
  taps, ``x / N``), so they need nothing.

The writer puts ``rt.unsharded(path, why)`` ahead of a refused layer; it raises only inside a
``sequence_parallel`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sympy

from codegen.source import literal
from codegen.torch import packing
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind

_DATA_MASKS = tuple(c for c in (getattr(M, "Buckets", None), getattr(M, "BlockMap", None),
                                getattr(M, "Document", None)) if c is not None)


def _sharded_nodes(g: Graph, n) -> set[int]:
    """Nodes whose output derives from an entry input along the sequence axis ``n``."""
    out: set[int] = set()
    for node in g.nodes():
        if node.kind == OpKind.INPUT:
            if any(sympy.sympify(d) == n for t in node.outs for d in t.shape):
                out.add(node.id)
        elif any(p.node in out for p in node.inputs):
            out.add(node.id)
    return out


def _mix(g: Graph, node: Node, b, n) -> tuple[str, str]:
    fam = node.spec.family
    if fam == "synthetic":
        return "refuse", "given scores over the whole sequence"
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is None:
            continue
        t = g.type_of(p)
        if t.rank < 2 or sympy.sympify(t.shape[-2]) != n:
            return "refuse", f"its {role} {t} is not laid out [.., {n}, ..] (a mixer over another sequence)"
    for leaf in M.mask_leaves(node.spec.mask):
        if _DATA_MASKS and isinstance(leaf, _DATA_MASKS):
            return "refuse", f"{leaf}: a mask computed from the data of other ranks' positions"
    return "honour", "a distributed algorithm (codegen/distributed)"


def classify(g: Graph, node: Node, fr, sharded: set[int]) -> tuple[str, str]:
    """('none' | 'honour' | 'refuse', why) for one node."""
    if node.id not in sharded or node.kind == OpKind.INPUT:
        return "none", ""
    b, n = fr
    if node.kind == OpKind.MIX:
        return _mix(g, node, b, n)
    what, why = packing.classify(g, node, fr)
    if what != "refuse":
        return what, why
    if node.kind == OpKind.BINARY and packing._uses(node.attr("scalar"), n):
        return "none", ""                     # the global N
    return "refuse", why


class Plan:
    def __init__(self, fr):
        self.frame = fr
        self._sharded: dict[int, set[int]] = {}
        self._cache: dict[tuple[int, int], tuple[str, str]] = {}

    def of(self, g: Graph, node: Node) -> tuple[str, str]:
        if self.frame is None:
            return "none", ""
        key = (id(g), node.id)
        if key not in self._cache:
            if id(g) not in self._sharded:
                self._sharded[id(g)] = _sharded_nodes(g, self.frame[1])
            self._cache[key] = classify(g, node, self.frame, self._sharded[id(g)])
        return self._cache[key]


def _plan(w) -> Plan:
    plan = getattr(w, "sp_plan", None)
    if plan is None:
        plan = w.sp_plan = Plan(packing.plan_of(w).frame)      # the entry's axes, as for packed rows
    return plan


def _whole_operands(w, plan: Plan, n: Node) -> list[tuple[tuple[int, int], int]]:
    """The operands of an elementwise op on a sharded tensor that are computed whole over the
    sequence (a table over N: RetNet's rotation written in the file): (var key, their N axis)."""
    if n.kind != OpKind.BINARY or plan.frame is None:
        return []
    sharded = plan._sharded.get(id(w.g), set())
    if n.id not in sharded:
        return []
    seq = plan.frame[1]
    out = []
    for p in n.inputs:
        if p.node in sharded:
            continue
        src = w.g.node(p.node)
        if src.kind in (OpKind.PARAM, OpKind.BUFFER, OpKind.POSITIONS) and packing.plan_of(w).honours(w.g, src):
            continue                            # read through rt.by_position already
        axes = [i for i, d in enumerate(w.g.type_of(p).shape) if sympy.sympify(d) == seq]
        if len(axes) == 1:
            out.append(((p.node, p.index), axes[0]))
    return out


def before(w, n: Node) -> None:
    """A refusal line ahead of a layer that cannot run on a split sequence; an operand computed
    whole over the sequence read at this rank's rows (``rt.local_rows``) by an op on a
    sharded tensor."""
    plan = _plan(w)
    what, why = plan.of(w.g, n)
    if what == "refuse":
        w.body.append(f"        rt.unsharded({literal(w.rel(n.name))}, {literal(why)})  "
                      "# sequence parallelism: refused here")
    saved = []
    for key, axis in _whole_operands(w, plan, n):
        saved.append((key, w.var[key]))
        w.var[key] = f"rt.local_rows({w.var[key]}, {axis})"
    w.sp_saved = saved


@contextlib.contextmanager
def layer_hooks(w, n: Node) -> Iterator[None]:
    """What the writer puts around one layer's line: packed rows' refusals and position reads
    (codegen/torch/packing.py), then this module's."""
    packing.before(w, n)
    before(w, n)
    yield
    after(w, n)
    packing.after(w, n)


def after(w, n: Node) -> None:
    """Undo ``before``'s operand rewrite (other readers see the whole tensor)."""
    for key, text in getattr(w, "sp_saved", []):
        w.var[key] = text
    w.sp_saved = []
