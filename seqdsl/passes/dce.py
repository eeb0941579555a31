"""Dead-node elimination: drop nodes whose results reach no output.

A value computed and never used (or a weight declared and never read) would otherwise
count in the parameter total and the cost table.
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
    if not dead:
        return graph
    out = copy.deepcopy(graph)
    out.remove(dead)
    return out
