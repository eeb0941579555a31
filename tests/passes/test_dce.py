"""Dead-node elimination: Before -> Expected After, and a second run changes nothing."""

from __future__ import annotations

import seqdsl
from seqdsl.ir.graph import format_graph, verify
from seqdsl.passes.dce import eliminate_dead_nodes

SOURCE = """
dim N = 8, D = 4
mixer m(x: [N, D], unused: [N]) {
  dead = linear(x, D)
  return relu(x)
}
"""


def test_dead_linear_disappears_inputs_stay():
    from seqdsl.check.elaborate import elaborate
    from seqdsl.check.program import load_program

    before = elaborate(load_program(SOURCE)).graph
    assert {n.name for n in before.nodes()} == {"x", "unused", "dead.weight", "dead.bias", "dead", "relu"}
    after = eliminate_dead_nodes(before)
    verify(after)
    assert {n.name for n in after.nodes()} == {"x", "unused", "relu"}
    again = eliminate_dead_nodes(after)
    assert again is after or format_graph(again) == format_graph(after)


def test_pipeline_output_has_no_dead_weights():
    checked = seqdsl.check(SOURCE)
    assert checked.param_count == 0
