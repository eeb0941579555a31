"""Dead-node elimination: Before -> Expected After, and a second run changes nothing; the
pipeline verifies and (with SEQDSL_DUMP) writes the graph after every stage."""

from __future__ import annotations

import sympy

import seqdsl
from seqdsl.check.elaborate import elaborate
from seqdsl.check.program import load_program
from seqdsl.ir.graph import format_graph, verify
from seqdsl.ir.types import dim_symbol
from seqdsl.passes import PIPELINE, run_pipeline
from seqdsl.passes.dce import eliminate_dead_nodes

SOURCE = """
dim N = 8, D = 4
mixer m(x: [N, D], unused: [N]) {
  dead = linear(x, D)
  return relu(x)
}
"""

BEFORE = """\
graph m {
  %0 = input[x]() : [N, D]
  %1 = input[unused]() : [N]
  %2 = param[dead.weight]() {init=normal(1/50)} : [D, D]
  %3 = param[dead.bias]() {init=zeros()} : [D]
  %4 = linear[dead](x=%0, weight=%2, bias=%3) : [N, D]
  %5 = unary[relu](x=%0) {fn=relu} : [N, D]
  return %5
}"""

EXPECTED_AFTER = """\
graph m {
  %0 = input[x]() : [N, D]
  %1 = input[unused]() : [N]
  %5 = unary[relu](x=%0) {fn=relu} : [N, D]
  return %5
}"""


def _elaborated(source: str):
    return elaborate(load_program(source)).graph


def test_dead_linear_disappears_inputs_stay():
    before = _elaborated(SOURCE)
    assert format_graph(before) == BEFORE
    after = eliminate_dead_nodes(before)
    verify(after)
    assert format_graph(after) == EXPECTED_AFTER
    assert format_graph(before) == BEFORE, "a pass must not modify its input"


def test_running_twice_changes_nothing():
    once = eliminate_dead_nodes(_elaborated(SOURCE))
    twice = eliminate_dead_nodes(once)
    assert twice is once or format_graph(twice) == format_graph(once)


def test_a_graph_without_dead_nodes_is_returned_as_is():
    g = _elaborated("dim N = 8, D = 4\nmixer m(x: [N, D]) {\n  return linear(x, D)\n}\n")
    assert eliminate_dead_nodes(g) is g


def test_dead_chains_and_unused_weights_go_together():
    g = _elaborated("dim N = 8, D = 4\nmixer m(x: [N, D]) {\n  param w: [D, D] = zeros()\n"
                    "  a = linear(x, D)\n  b = relu(a) @ w\n  return x * 2\n}\n")
    after = eliminate_dead_nodes(g)
    assert [n.name for n in after.nodes()] == ["x", "mul"]


def test_pipeline_output_has_no_dead_weights():
    assert seqdsl.check(SOURCE).param_count == 0


def test_dead_nodes_inside_an_expert_are_removed():
    text = ("dim B, N = 4, D = 8, E = 4\nblock ffn(x: [B, N, D]) {\n  dead = linear(x, D)\n  return relu(x)\n}\n"
            "model m(x: [B, N, D]) {\n  return moe(x, expert = ffn, experts = E)\n}\n")
    count = seqdsl.check(text).param_count
    assert sympy.expand(count - dim_symbol("E") * dim_symbol("D")) == 0, count   # the router only


def test_dump_writes_one_file_per_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_DUMP", str(tmp_path))
    checked = seqdsl.check(SOURCE)
    stages = ["elaborated"] + [name for name, _ in PIPELINE]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{i:02d}-m-{stage}.txt" for i, stage in enumerate(stages)]
    assert (tmp_path / files[0]).read_text() == BEFORE + "\n"
    assert (tmp_path / files[-1]).read_text() == format_graph(checked.graph) + "\n"


def test_no_dump_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQDSL_DUMP", raising=False)
    monkeypatch.chdir(tmp_path)
    run_pipeline(_elaborated(SOURCE))
    assert list(tmp_path.iterdir()) == []
