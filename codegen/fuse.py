"""Elementwise work folded into a token mixer's call, found on the layer graph.

Two patterns, both general (they look at the ops around a MIX node, never at its name):

- **A rank-one log-gate** (Mamba's Δ ⊗ A): the ``decay`` input of a linear mixer is a product
  ``a * b`` whose operands have size 1 on complementary axes ([..., N, 1] · [..., 1, F]). The
  call gets ``OuterGate(a[..., 0], b[..., 0, :])``; the [..., N, F] product is never built.
- **Gates around a Toeplitz mix** (H3, Hyena, GSS): ``post * (mix(pre * v) + skip * (pre * v))``
  with ``skip`` a per-channel weight [C]. Each part is optional; a part is folded only when
  the intermediate it removes has no other reader, so nothing is computed twice.

A fold names the nodes that the writer then leaves out, and the node whose output the
mixer's call now produces.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sympy

from seqdsl.ir.graph import Graph, Node, OpKind, Port

OUTPUT = -1   # a reader id standing for "an output of the graph"


def readers(g: Graph) -> dict[tuple[int, int], list[tuple[int, str]]]:
    """(node, output index) -> [(reading node id, role)], graph outputs as (OUTPUT, "")."""
    out: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
    for n in g.nodes():
        for p in n.inputs:
            out[(p.node, p.index)].append((n.id, p.role))
    for p in g.outputs:
        out[(p.node, p.index)].append((OUTPUT, ""))
    return out


def _binary(g: Graph, node: Node | None, op: str) -> Node | None:
    """``node`` if it is ``a op b`` of two tensors, else None."""
    if node is None or node.kind != OpKind.BINARY or node.attr("op") != op or node.attr("scalar") is not None:
        return None
    return node


def _producer(g: Graph, port: Port | None) -> Node | None:
    return None if port is None or port.index != 0 else g.node(port.node)


def _sole_reader(g: Graph, uses, nid: int) -> Node | None:
    """The one node reading ``nid``'s output, if exactly one does (a graph output does not count)."""
    found = uses[(nid, 0)]
    if len(found) != 1 or found[0][0] == OUTPUT:
        return None
    return g.node(found[0][0])


def _other(n: Node, nid: int) -> Port | None:
    """The operand of the binary node ``n`` that is not ``nid``'s output (None if both are)."""
    a, b = n.input("a"), n.input("b")
    if a.node == nid and b.node != nid:
        return b
    if b.node == nid and a.node != nid:
        return a
    return None


def _one(x) -> bool:
    return sympy.sympify(x) == 1


@dataclass
class Fold:
    """What a mixer call absorbs: extra call arguments (role -> port), the nodes left out, and
    the node whose output the call now stands for."""

    args: dict[str, Port] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)
    result: int | None = None
    v: Port | None = None          # the mixer's value input after a pre-gate was folded
    hoist: list[int] = field(default_factory=list)   # nodes to compute before the call (they read
                                                     # only what exists before the mixer)


def outer_gate(g: Graph, mix: Node, uses) -> Fold | None:
    """Fold a rank-one ``decay(log = a * b)`` into ``OuterGate(rate, channel)``."""
    port = mix.input("decay")
    prod = _binary(g, _producer(g, port), "*")
    if prod is None or uses[(prod.id, 0)] != [(mix.id, "decay")]:
        return None
    a, b = prod.input("a"), prod.input("b")
    ta, tb = g.type_of(a), g.type_of(b)
    if ta.rank != tb.rank or ta.rank < 2:
        return None
    for rate, channel, tr, tc in ((a, b, ta, tb), (b, a, tb, ta)):
        if _one(tr.shape[-1]) and _one(tc.shape[-2]) and not _one(tc.shape[-1]):
            return Fold(args={"gate_rate": rate, "gate_channel": channel}, dropped={prod.id}, result=mix.id)
    return None


def _available(g: Graph, port: Port, mix: Node, fold: Fold) -> bool:
    """Whether ``port`` can be read by the mixer's call: computed before it, or by a node whose
    own inputs all are (a slice of a weight written after the mix, say), which is then hoisted."""
    if port.node < mix.id:
        return True
    n = g.node(port.node)
    if n.kind in (OpKind.MIX, OpKind.INPUT) or n.attr("body") is not None or not n.inputs:
        return False
    if all(p.node < mix.id for p in n.inputs):
        if n.id not in fold.hoist:
            fold.hoist.append(n.id)
        return True
    return False


def toeplitz_gates(g: Graph, mix: Node, uses, taken: frozenset[int] = frozenset()) -> Fold | None:
    """Fold ``post * (mix(pre * v) + skip * (pre * v))`` around a Toeplitz mix (parts optional).
    ``taken``: nodes that earlier folds leave out or stand for; they are neither left out
    again nor read from here."""
    fold = Fold(result=mix.id)
    v = mix.input("v")
    channels = g.type_of(v).shape[-1]
    end = mix.id

    # skip: mix + v * w, with w a [C] weight that exists before the mix
    add = _binary(g, _sole_reader(g, uses, mix.id), "+")
    other = _other(add, mix.id) if add is not None else None
    m = _binary(g, _producer(g, other), "*")
    if m is not None and len(uses[(m.id, 0)]) == 1 and not {m.id, add.id} & taken:
        ops = (m.input("a"), m.input("b"))
        for x, w in (ops, ops[::-1]):
            tw = g.type_of(w)
            if (x.node, x.index) == (v.node, v.index) and tw.rank == 1 and w.node not in taken \
                    and sympy.simplify(tw.shape[0] - channels) == 0 and _available(g, w, mix, fold):
                fold.args["skip"] = w
                fold.dropped |= {m.id, add.id}
                end = add.id
                break

    # post: end * y, with y of the output's shape and computed before the mix
    mul = _binary(g, _sole_reader(g, uses, end), "*")
    other = _other(mul, end) if mul is not None else None
    if other is not None and mul.id not in taken and other.node not in taken \
            and g.type_of(other).shape == g.node(end).out.shape and _available(g, other, mix, fold):
        fold.args["post"] = other
        fold.dropped.add(mul.id)
        end = mul.id

    # pre: v = a * b, read by nothing but the mix and the folded skip
    prod = _binary(g, _producer(g, v), "*")
    if prod is not None and prod.id not in taken and {r for r, _ in uses[(v.node, v.index)]} <= {mix.id} | fold.dropped:
        a, b = prod.input("a"), prod.input("b")
        if g.type_of(a).shape == g.type_of(b).shape == g.type_of(v).shape:
            fold.v, fold.args["pre"] = a, b
            fold.dropped.add(prod.id)
    if not fold.args:
        return None
    fold.result = end
    return fold
