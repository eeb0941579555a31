"""parse -> print -> parse gives the same AST, and printing is idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqdsl.frontend.parser import parse_text
from seqdsl.frontend.printer import module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.seq"))

SNIPPETS = {
    "sub-assoc": "a - (b - c)",
    "neg-pow": "-x ** 2",
    "paren-neg-pow": "(-x) ** 2",
    "pow-neg": "a ** -b",
    "pow-right": "a ** b ** c",
    "nested-cond": "if c then if d then a else b else e",
    "cond-in-arith": "(if c then a else b) + 1",
    "not-and": "not a and b",
    "not-paren": "not (a and b)",
    "compare": "a + 1 <= b * 2",
    "compare-paren": "(a < b) == c",
    "masks": "causal() & window(W) | global_tokens(G) & (local(4) | full())",
    "mask-arith": "(a | b) + c",
    "slices": "x[:, -M:, ..., None]",
    "slice-bounds": "x[1:N - 1, :2, 3:]",
    "strings": '"a \\"quoted\\" \\\\ back\\nslash"',
    "kwargs": "f(x, k = 2, m = [1, 2], s = \"p\")",
    "calls": "f(g(x))(y)[0].T",
    "unary": "-(-x) + ~m",
    "matmul": "a @ b @ c",
    "mod-div": "a // b % c / d",
    "in": "i in [2, L / 2]",
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}-{p.stem}" for p in EXAMPLES])
def test_examples_roundtrip(path):
    ast = parse_text(path.read_text(), str(path))
    text = module(ast)
    again = parse_text(text, "<printed>")
    assert again == ast
    assert module(again) == text


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_expression_roundtrip(name):
    src = f"mixer m(x: [N]) {{\n  y = {SNIPPETS[name]}\n  return y\n}}\n"
    ast = parse_text(src, "<snippet>")
    text = module(ast)
    assert parse_text(text, "<printed>") == ast, text


def test_statements_roundtrip():
    src = """
import "x.seq"
dim B, N = 4
option W = 2
require N % W == 0, "msg"
block b(x: [B, N], t: int[B, N], k = 3) -> [B, N] {
  param E: [N, N] = normal(0.02)
  repeat 2 as i shared {
    if i == 0 { x = x } else if i == 1 { x = -x } else { x = x * 2 }
  }
  a, c = f(x)
  require N > 1
  return x
}
"""
    ast = parse_text(src, "<s>")
    assert parse_text(module(ast), "<p>") == ast
