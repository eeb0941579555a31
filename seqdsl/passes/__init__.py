"""Graph -> Graph passes, in the order the pipeline runs them.

Each pass is a pure function of the graph (it returns a new graph or the same one when
there is nothing to do) and keeps the invariants of :func:`seqdsl.ir.graph.verify`.
With ``SEQDSL_DUMP=dir`` the graph is written after every pass under the pass's name.
"""

from __future__ import annotations

from collections.abc import Callable

from seqdsl.ir.graph import Graph, dump, verify
from seqdsl.passes.dce import eliminate_dead_nodes

Pass = Callable[[Graph], Graph]

PIPELINE: list[tuple[str, Pass]] = [
    ("eliminate_dead_nodes", eliminate_dead_nodes),
]


def run_pipeline(graph: Graph, passes: list[tuple[str, Pass]] | None = None) -> Graph:
    dump(graph, "elaborated")
    for name, fn in passes or PIPELINE:
        graph = fn(graph)
        verify(graph)
        dump(graph, name)
    return graph
