"""verify() catches broken graphs; every example's graph verifies and prints.
(SEQDSL_DUMP is tested with the pipeline, in tests/passes/test_dce.py.)"""

from __future__ import annotations

import pytest
import sympy

from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, OpKind, Port, VerifyError, format_graph, verify
from seqdsl.ir.types import TensorType, dim_symbol

T = TensorType((dim_symbol("N"),))


def small_graph() -> Graph:
    g = Graph("g")
    x = g.add(OpKind.INPUT, "x", [], T)
    y = g.add(OpKind.UNARY, "y", [Port("x", x.id)], T, {"fn": "relu"})
    g.outputs = [Port("out", y.id)]
    return g


def test_a_good_graph_verifies():
    verify(small_graph())


def test_missing_input_node():
    g = small_graph()
    g.add(OpKind.UNARY, "z", [Port("x", 99)], T, {"fn": "relu"})
    with pytest.raises(VerifyError, match="missing node 99"):
        verify(g)


def test_duplicate_names():
    g = small_graph()
    g.add(OpKind.UNARY, "y", [Port("x", 0)], T, {"fn": "relu"})
    with pytest.raises(VerifyError, match="two nodes are named 'y'"):
        verify(g)


def test_cycle():
    g = small_graph()
    g.nx.add_edge(1, 0, role="back", index=0)
    with pytest.raises(VerifyError, match="cycle"):
        verify(g)


def test_mix_spec_refers_to_a_missing_role():
    g = Graph("g")
    v = g.add(OpKind.INPUT, "v", [], TensorType((dim_symbol("N"), sympy.Integer(4))))
    spec = M.MixSpec(None, None, M.And(M.Causal(), M.Decay(M.Ref("decay"))), "none")
    g.add(OpKind.MIX, "mix", [Port("v", v.id)], v.out, {"spec": spec})
    with pytest.raises(VerifyError, match="%decay which is not an input"):
        verify(g)


def test_inputs_read_nothing():
    g = small_graph()
    g.add(OpKind.PARAM, "w", [Port("x", 0)], T)
    with pytest.raises(VerifyError, match="reads no inputs"):
        verify(g)


def test_every_example_verifies_and_prints(example, checked_example):
    checked = checked_example(example)
    verify(checked.graph)
    text = format_graph(checked.graph)
    assert text.startswith(f"graph {checked.entry} {{") and "return %" in text


def test_output_reads_a_missing_node():
    g = small_graph()
    g.outputs = [Port("out", 42)]
    with pytest.raises(VerifyError, match="output reads missing node 42"):
        verify(g)


def test_input_reads_an_output_index_the_node_lacks():
    g = small_graph()
    g.add(OpKind.UNARY, "z", [Port("x", 1, 3)], T, {"fn": "relu"})
    with pytest.raises(VerifyError, match="reads output 3 of a node with fewer"):
        verify(g)


def test_ids_must_be_topological():
    g = small_graph()
    g.nx.add_edge(1, 0, role="late", index=0)
    g.nx.remove_edge(0, 1)
    with pytest.raises(VerifyError, match="reads a later node"):
        verify(g)


def test_bad_output_dtype():
    g = small_graph()
    g.add(OpKind.UNARY, "z", [Port("x", 0)], TensorType((dim_symbol("N"),), "complex"), {"fn": "relu"})
    with pytest.raises(VerifyError, match="bad output type"):
        verify(g)


def test_mix_without_values():
    g = Graph("g")
    q = g.add(OpKind.INPUT, "q", [], TensorType((dim_symbol("N"), sympy.Integer(4))))
    g.add(OpKind.MIX, "mix", [Port("q", q.id), Port("k", q.id)], q.out, {"spec": M.MixSpec(None, None, M.Full(), "softmax")})
    with pytest.raises(VerifyError, match="needs values"):
        verify(g)


def test_nested_bodies_are_verified():
    body = small_graph()
    body.outputs = [Port("out", 7)]
    g = small_graph()
    g.add(OpKind.MOE, "moe", [Port("x", 0)], T, {"body": body, "copies": 2})
    with pytest.raises(VerifyError, match="output reads missing node 7"):
        verify(g)


def test_nodes_are_frozen_and_hashable():
    node = small_graph().node(1)
    with pytest.raises(AttributeError):
        node.name = "other"  # type: ignore[misc]
    assert hash(node) == hash(node) and node.kind is OpKind.UNARY
    assert node.input("x") == Port("x", 0) and node.input("nope") is None
