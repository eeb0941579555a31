"""parse -> print -> parse gives the same AST, and printing is idempotent: for every
example, for hand-picked tricky snippets, and for random expression trees (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seqdsl.frontend import ast as A
from seqdsl.frontend.parser import parse_text
from seqdsl.frontend.printer import expr, module

SNIPPETS = {
    "sub-assoc": "a - (b - c)",
    "sub-left": "a - b - c",
    "div-assoc": "a / (b * c)",
    "neg-pow": "-x ** 2",
    "paren-neg-pow": "(-x) ** 2",
    "neg-of-pow-paren": "-(x ** 2)",
    "pow-neg": "a ** -b",
    "pow-right": "a ** b ** c",
    "pow-left": "(a ** b) ** c",
    "pow-call": "f(x) ** g(y)[0]",
    "nested-cond": "if c then if d then a else b else e",
    "cond-in-test": "if (if c then a else b) then x else y",
    "cond-in-arith": "(if c then a else b) + 1",
    "cond-else-arith": "if c then a else b + 1",
    "cond-in-call": "f(if c then a else b, k = if d then 1 else 2)",
    "not-and": "not a and b",
    "not-paren": "not (a and b)",
    "not-not": "not not a",
    "and-or": "a or b and c",
    "or-paren": "(a or b) and c",
    "compare": "a + 1 <= b * 2",
    "compare-paren": "(a < b) == c",
    "compare-not": "not a == b",
    "in-list": "i in [2, L / 2]",
    "masks": "causal() & window(W) | global_tokens(G) & (local(4) | full())",
    "mask-arith": "(a | b) + c",
    "and-vs-plus": "a & b + c",
    "plus-vs-and": "(a & b) + c",
    "or-in-and": "a & (b | c)",
    "complement": "~a & ~(b | c)",
    "unary": "-(-x) + ~m",
    "neg-attr": "(-x).T",
    "neg-index": "-x[0]",
    "slices": "x[:, -M:, ..., None]",
    "slice-bounds": "x[1:N - 1, :2, 3:, :]",
    "slice-expr": "x[a + 1:if c then 2 else 3]",
    "strings": '"a \\"quoted\\" \\\\ back\\nslash\\ttab"',
    "kwargs": "f(x, k = 2, m = [1, 2], s = \"p\")",
    "calls": "f(g(x))(y)[0].T",
    "call-of-paren": "(f)(x)",
    "matmul": "a @ b @ c",
    "matmul-right": "a @ (b @ c)",
    "mod-div": "a // b % c / d",
    "numbers": "[0, 1.5, .5, 1e-3, 2E+4, 3.]",
    "empty-list": "[]",
    "nested-list": "[[a], [b, [c]]]",
    "bools": "true and not false",
    "shape": "x.shape[-1] * 2",
}


def _roundtrip(ast: A.Module) -> str:
    text = module(ast)
    again = parse_text(text, "<printed>")
    assert again == ast, text
    assert module(again) == text, "printing is not idempotent"
    return text


def _snippet_module(expression: str) -> str:
    return f"mixer m(x: [N]) {{\n  y = {expression}\n  return y\n}}\n"


def test_examples_roundtrip(example):
    _roundtrip(parse_text(example.read_text(), str(example)))


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_expression_roundtrip(name):
    _roundtrip(parse_text(_snippet_module(SNIPPETS[name]), "<snippet>"))


@pytest.mark.parametrize(("source", "tree"), [
    ("a - (b - c)", "(- a (- b c))"),
    ("a - b - c", "(- (- a b) c)"),
    ("-x ** 2", "(neg (** x 2))"),
    ("(-x) ** 2", "(** (neg x) 2)"),
    ("a ** -b", "(** a (neg b))"),
    ("a ** b ** c", "(** a (** b c))"),
    ("not a and b", "(and (not a) b)"),
    ("a or b and c", "(or a (and b c))"),
    ("a & b | c", "(| (& a b) c)"),
    ("a | b & c", "(| a (& b c))"),
    ("a & b + c", "(& a (+ b c))"),
    ("a + 1 <= b * 2", "(<= (+ a 1) (* b 2))"),
    ("not a == b", "(not (== a b))"),
    ("-x[0]", "(neg (index x))"),
    ("if c then a else b + 1", "(if c a (+ b 1))"),
])
def test_precedence_is_what_the_grammar_says(source, tree):
    """The printer is only right if the parser is: pin down how the parser groups."""

    def show(e) -> str:
        match e:
            case A.BinOp(op=op, left=left, right=right):
                return f"({op} {show(left)} {show(right)})"
            case A.UnaryOp(op=op, operand=o):
                return f"({'neg' if op == '-' else op} {show(o)})"
            case A.Cond(test=t, then=a, orelse=b):
                return f"(if {show(t)} {show(a)} {show(b)})"
            case A.Index(base=b):
                return f"(index {show(b)})"
        return expr(e)

    value = parse_text(_snippet_module(source), "<snippet>").items[0].body[0].value
    assert show(value) == tree


def test_statements_roundtrip():
    src = """
import "x.seq"
dim B, N = 4, D = N * 2
option W = 2, causal = true
require N % W == 0, "msg with \\"quotes\\""
block b(x: [B, N], t: int[B, N], m: bool[N], k = 3) -> [B, N], [B, N] {
  param E: [N, N] = normal(0.02)
  param F: [N]
  repeat 2 as i shared {
    if i == 0 { x = x } else if i == 1 { x = -x } else { x = x * 2 }
  }
  repeat L { x = x }
  repeat L as j { if j in [1] { x = x } }
  repeat L shared { ; }
  if k > 1 { x = x }
  a, c = f(x)
  require N > 1
  return x, c
}
model e() {
  return y
}
"""
    _roundtrip(parse_text(src, "<s>"))


def test_semicolons_and_comments_are_not_kept():
    a = parse_text("dim N = 4; # a comment\nmixer m(x: [N]) { y = x; ; return y }\n", "<a>")
    b = parse_text("dim N = 4\nmixer m(x: [N]) {\n  y = x\n  return y\n}\n", "<b>")
    assert a == b
    assert module(a) == module(b)


# ---- random expression trees -----------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "x", "N", "causal", "f", "shape", "T", "i"])
NUMBERS = st.sampled_from(["0", "1", "2", "10", "0.5", "1e3", ".25", "3."])
# Backslashes in strings are covered by test_string_values_roundtrip below.
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\\\r"), max_size=8)
BINOPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "@", "**", "&", "|", "==", "!=", "<", "<=", ">", ">=",
                          "in", "and", "or"])


def _leaves() -> st.SearchStrategy:
    return st.one_of(
        NAMES.map(A.Name), NUMBERS.map(A.Number), SAFE_TEXT.map(A.String), st.booleans().map(A.Bool))


def _extend(children: st.SearchStrategy) -> st.SearchStrategy:
    subs = st.one_of(children, st.builds(A.Slice, st.none() | children, st.none() | children),
                     st.just(A.EllipsisIndex()), st.just(A.NewAxis()))
    kwargs = st.lists(st.builds(A.Kwarg, NAMES, children), max_size=2, unique_by=lambda k: k.name)
    return st.one_of(
        st.builds(A.BinOp, BINOPS, children, children),
        st.builds(A.UnaryOp, st.sampled_from(["-", "~", "not"]), children),
        st.builds(A.Cond, children, children, children),
        st.builds(A.Call, children, st.lists(children, max_size=3).map(tuple), kwargs.map(tuple)),
        st.builds(A.Index, children, st.lists(subs, min_size=1, max_size=3).map(tuple)),
        st.builds(A.Attr, children, NAMES),
        st.builds(A.ListExpr, st.lists(children, max_size=3).map(tuple)),
    )


EXPRESSIONS = st.recursive(_leaves(), _extend, max_leaves=12)


def _wrap(e: A.Expr) -> A.Module:
    body = (A.Assign(("y",), e), A.Return((A.Name("y"),)))
    return A.Module("<gen>", (A.Definition("mixer", "m", (), None, body),))


@settings(max_examples=150, deadline=None)
@given(EXPRESSIONS)
def test_random_expressions_roundtrip(e):
    _roundtrip(_wrap(e))


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=10))
@example("a\\nb")
@example("\\t")
def test_string_values_roundtrip(value):
    _roundtrip(_wrap(A.String(value)))
    source = _snippet_module('"a\\\\nb"')          # in the file: "a\\nb"
    assert parse_text(source, "<s>").items[0].body[0].value == A.String("a\\nb")


def test_attribute_of_an_integer_roundtrips():
    _roundtrip(parse_text(_snippet_module("(2).T"), "<snippet>"))
