"""verify() catches broken graphs; every example's graph verifies; SEQDSL_DUMP writes each stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import sympy

import seqdsl
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, OpKind, Port, VerifyError, format_graph, verify
from seqdsl.ir.types import TensorType, dim_symbol

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.seq"))
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


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}-{p.stem}" for p in EXAMPLES])
def test_every_example_verifies_and_prints(path):
    checked = seqdsl.check(path)
    verify(checked.graph)
    text = format_graph(checked.graph)
    assert text.startswith(f"graph {checked.entry} {{") and "return %" in text


def test_dump_writes_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_DUMP", str(tmp_path))
    seqdsl.check(ROOT / "examples" / "mixers" / "gla.seq")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-main-elaborated.txt", "01-main-eliminate_dead_nodes.txt"] or \
        names == ["00-gla-elaborated.txt", "01-gla-eliminate_dead_nodes.txt"]
