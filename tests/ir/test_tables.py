"""Prefix-consistent position tables (seqdsl/ir/tables.py): a factorised table whose N axis is
the outermost of the axes flattened into the positions serves every shorter length with its
first rows; any other layout keeps fixing N, and says why."""

from __future__ import annotations

import pytest
import sympy

import seqdsl
from seqdsl.ir.tables import prefix_tables

HEAD = "dim B, N = 24, R = 4, C = 2, D = 8, V = 10\n"


def _tables(body: str):
    checked = seqdsl.check(HEAD + "model m(tokens: int[B, N]) -> [B, N, D] {\n" + body + "\n}\n")
    g = checked.graph
    return prefix_tables(g, sympy.sympify(g.inputs[0].out.shape[1]))


OUTER = """  param rows: [N / (R * C), 1, 1, D] = normal(1)
  param cols: [1, R, 1, D] = normal(1)
  param chan: [1, 1, C, D] = normal(1)
  return embed(tokens, V, D) + rearrange(rows + cols + chan, "r w c d -> (r w c) d")"""


def test_outermost_n_axis_is_a_prefix_table():
    t = _tables(OUTER)
    assert t.weights == ("rows",) and len(t.ends) == 1 and not t.refused


@pytest.mark.parametrize("body,why", [
    ("  param rows: [R, 1, D] = normal(1)\n  param cols: [1, N / R, D] = normal(1)\n"
     "  return embed(tokens, V, D) + rearrange(rows + cols, \"r c d -> (r c) d\")", "inside (r c)"),
    ("  param rows: [N / R, 1, D] = normal(1)\n  param cols: [1, R, D] = normal(1)\n"
     "  return embed(tokens, V, D) + rearrange(rows + cols, \"r c d -> (c r) d\")", "inside (c r)"),
    ("  param rows: [N / R, R, D] = normal(1)\n"
     "  return embed(tokens, V, D) + rearrange(softmax(rows, axis = 0), \"r c d -> (r c) d\")", "reads it"),
])
def test_other_layouts_keep_fixing_n_and_say_why(body, why):
    t = _tables(body)
    assert not t.weights and any(why in r for r in t.refused.values()), t.refused


def test_the_module_builds_the_table_once_and_reads_its_first_rows():
    """Built at N = 24 (bounded), read at 16: the first 16 rows of the same table; at 32: refused."""
    torch = pytest.importorskip("torch")
    model = seqdsl.load(HEAD + "model m(tokens: int[B, N]) -> [B, N, D] {\n" + OUTER + "\n}\n", D=8, V=10)
    assert model.BOUNDS == {"N": 24} and "N" in model.RUNTIME
    tokens = torch.randint(0, 10, (2, 24))
    with torch.no_grad():
        whole, part = model(tokens), model(tokens[:, :16])
    assert torch.equal(part, whole[:, :16])
    with pytest.raises(seqdsl.SeqError, match=r"tokens has N = 32.*at most N = 24"):
        model(torch.randint(0, 10, (2, 32)))
    inner = seqdsl.load(HEAD + "model m(tokens: int[B, N]) -> [B, N, D] {\n  param rows: [R, 1, D] = normal(1)\n"
                        "  param cols: [1, N / R, D] = normal(1)\n  return embed(tokens, V, D) + "
                        "rearrange(rows + cols, \"r c d -> (r c) d\")\n}\n", D=8, V=10)
    assert "N" not in inner.RUNTIME and "inside (r c)" in inner.FIXED_BY["N"], inner.FIXED_BY
