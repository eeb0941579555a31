"""Dead-node elimination: drop nodes whose results reach no output.

A value computed and never used (or a weight declared and never read) would otherwise
count in the parameter total and the cost table. Nested bodies (MoE experts, fixed-point
cells, recurrent steps) are graphs of their own: the pass runs on each of them too.
"""

from __future__ import annotations

import copy

import networkx as nx

from seqdsl.ir.graph import Graph, OpKind


def eliminate_dead_nodes(graph: Graph) -> Graph:
    live: set[int] = set()
    for port in graph.outputs:
        live.add(port.node)
        live |= nx.ancestors(graph.nx, port.node)
    # Inputs are the entry's signature: they stay even when unused.
    dead = {n.id for n in graph.nodes() if n.id not in live and n.kind != OpKind.INPUT}
    bodies: dict[int, Graph] = {}
    for n in graph.nodes():
        body = n.attr("body")
        if n.id in live and body is not None:
            cleaned = eliminate_dead_nodes(body)
            if cleaned is not body:
                bodies[n.id] = cleaned
    if not dead and not bodies:
        return graph
    out = copy.deepcopy(graph)
    out.remove(dead)
    for nid, body in bodies.items():
        out.set_attr(nid, "body", body)
    return out
