"""Golden error messages: each bad input gives exactly this message at exactly this place.

The expected text is the whole rendered error (location, message, source line, caret,
hint) stored in tests/golden/errors/<case>.txt; regenerate with --update-golden and review.
Each message was read before it was blessed. Messages that are wrong, unclear or point at
the wrong place are not blessed: they are strict xfails at the end of this file, stating
what the message should be (they have no golden, so --update-golden cannot bless them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import seqdsl

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "errors"

HEAD = "dim B, N = 16, D = 8, H = 2\n"
QKV = "q: [B, H, N, D], k: [B, H, N, D], v: [B, H, N, D]"

# name: (source, sizes, (line, column) of the error)
CASES = {
    # ---- syntax
    "missing-brace": (HEAD + "mixer m(x: [N]) {\n  return x\n", {}, (4, 1)),
    "missing-paren": (HEAD + "mixer m(x: [N]) {\n  return relu(x\n}\n", {}, (4, 1)),
    "assign-in-condition": (HEAD + "mixer m(x: [N]) {\n  if N = 2 { x = x }\n  return x\n}\n", {}, (3, 8)),
    "unexpected-token": (HEAD + "mixer m(x: [N]) {\n  return x x\n}\n", {}, (4, 1)),
    "keyword-as-name": (HEAD + "mixer m(x: [N]) {\n  if = x\n  return x\n}\n", {}, (3, 6)),
    "unterminated-string": (HEAD + "mixer m(x: [N]) {\n  y = rearrange(x, \"n -> n)\n  return y\n}\n", {}, (3, 20)),
    "bad-character": (HEAD + "mixer m(x: [N]) {\n  return x $ 2\n}\n", {}, (3, 12)),
    "positional-after-keyword": (HEAD + "mixer m(x: [N]) {\n  return linear(x = x, 4)\n}\n", {}, (3, 24)),
    # ---- names and calls
    "unknown-name": (HEAD + "mixer m(x: [N]) {\n  return x + y\n}\n", {}, (3, 14)),
    "unknown-name-suggestion": (HEAD + "mixer m(x: [N, D]) {\n  return layernrom(x)\n}\n", {}, (3, 10)),
    "unknown-parameter": (HEAD + "mixer m(x: [N, D]) {\n  return linear(x, D, biass = false)\n}\n", {}, (3, 23)),
    "missing-argument": (HEAD + "mixer m(x: [N, D]) {\n  return linear(x)\n}\n", {}, (3, 10)),
    "too-many-arguments": (HEAD + "mixer m(x: [N, D]) {\n  return relu(x, x)\n}\n", {}, (3, 10)),
    "tensor-expected": (HEAD + "mixer m(x: [N, D]) {\n  return layernorm(3)\n}\n", {}, (3, 10)),
    "mask-expected": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = q)\n}}\n", {}, (3, 23)),
    "not-a-function": (HEAD + "mixer m(x: [N, D]) {\n  return x(2)\n}\n", {}, (3, 10)),
    "bad-choice": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, norm = sofmax)\n}}\n", {}, (3, 23)),
    # ---- shapes and dtypes
    "linear-on-tokens": (HEAD + "model m(t: int[B, N]) {\n  return linear(t, D)\n}\n", {}, (3, 10)),
    "matmul-inner": (HEAD + "mixer m(x: [N, D], y: [N, D]) {\n  return x @ y\n}\n", {}, (3, 10)),
    "broadcast": (HEAD + "mixer m(x: [N, D], y: [D, N]) {\n  return x + y\n}\n", {}, (3, 10)),
    "mix-qk-width": (HEAD + "mixer m(q: [B, H, N, D], k: [B, H, N, H], v: [B, H, N, D]) {\n"
                     "  return mix(q, k, v)\n}\n", {}, (3, 10)),
    "mix-kv-length": ("dim B, N = 16, M = 8, D = 8, H = 2\nmixer m(q: [B, H, N, D], k: [B, H, N, D], v: [B, H, M, D]) {\n"
                      "  return mix(q, k, v)\n}\n", {}, (3, 10)),
    "declared-return": (HEAD + "mixer m(x: [N, D]) -> [N, N] {\n  return x\n}\n", {}, (2, 23)),
    "argument-shape": (HEAD + "block f(x: [N, D]) {\n  return x\n}\nmodel m(x: [D, N]) {\n  return f(x)\n}\n", {},
                       (6, 10)),
    "rearrange-pattern": (HEAD + "mixer m(x: [N, D]) {\n  return rearrange(x, \"n d\")\n}\n", {}, (3, 10)),
    "rearrange-size": (HEAD + "mixer m(x: [N, D]) {\n  return rearrange(x, \"n (h d) -> n h d\", h = 3)\n}\n", {},
                       (3, 10)),
    "unpack": (HEAD + "mixer m(x: [N, D]) {\n  a, b = relu(x)\n  return a\n}\n", {}, (3, 3)),
    # ---- structure of definitions and programs
    "recursion": (HEAD + "block f(x: [N]) {\n  return g(x)\n}\nblock g(x: [N]) {\n  return f(x)\n}\n", {}, (3, 10)),
    "duplicate-definition": (HEAD + "block f(x: [N]) {\n  return x\n}\nblock f(x: [N]) {\n  return x\n}\n", {},
                             (5, 1)),
    "duplicate-dim": (HEAD + "dim N = 4\nmixer m(x: [N]) {\n  return x\n}\n", {}, (2, 5)),
    "statement-after-return": (HEAD + "mixer m(x: [N]) {\n  return x\n  y = x\n}\n", {}, (4, 3)),
    "missing-return": (HEAD + "mixer m(x: [N]) {\n  y = x\n}\n", {}, (2, 1)),
    "repeat-unknown-count": ("dim B, N\nmixer m(x: [N]) {\n  repeat N { x = x + 1 }\n  return x\n}\n", {}, (3, 10)),
    "if-unknown": ("dim B, N\nmixer m(x: [N]) {\n  if N > 4 { x = x }\n  return x\n}\n", {}, (3, 6)),
    # ---- sizes and constraints
    "derived-not-divisible": ("dim N = 16, D = 10, H = 4\ndim Dh = D / H\nmixer m(x: [N, Dh]) {\n  return x\n}\n", {},
                              (2, 5)),
    "require-fails": (HEAD + "require N % 5 == 0, \"N must be a multiple of 5\"\nmixer m(x: [N]) {\n  return x\n}\n",
                      {}, (2, 1)),
    "set-unknown-dim": (HEAD + "mixer m(x: [N]) {\n  return x\n}\n", {"Q": 3}, (0, 0)),
    "set-derived-dim": ("dim N = 16, D = 8, H = 2\ndim Dh = D / H\nmixer m(x: [N, Dh]) {\n  return x\n}\n",
                        {"Dh": 3}, (2, 5)),
    # ---- the template
    "decay-with-softmax": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = causal() & decay(0.9), norm = softmax)\n}}\n",
                           {}, (3, 10)),
    "feature-with-softmax": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, feature = elu1, norm = softmax)\n}}\n",
                             {}, (3, 10)),
    "sparse-mask-linear": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, feature = elu1, mask = window(4), norm = sum)\n}}\n",
                           {}, (3, 10)),
    "toeplitz-with-qk": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = toeplitz(ssm(diag)))\n}}\n",
                         {}, (3, 10)),
    "algorithm-not-applicable": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = causal(), algorithm = fft)\n}}\n",
                                 {}, (3, 10)),
    "union-with-decay": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = causal() | decay(0.9), norm = none)\n}}\n",
                         {}, (3, 30)),
    "mask-complement": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = ~causal())\n}}\n", {}, (3, 30)),
    "decay-without-causal": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = decay(0.9), norm = none)\n}}\n",
                             {}, (3, 10)),
    # ---- added: more kinds, dtypes, declarations, the template's parts
    "float-op-on-tokens": (HEAD + "model m(t: int[B, N]) {\n  return t * 2\n}\n", {}, (3, 10)),
    "number-expected": (HEAD + "mixer m(x: [N, D]) {\n  return linear(x, x)\n}\n", {}, (3, 10)),
    "mix-on-tokens": (HEAD + "mixer m(q: int[B, N, D]) {\n  return mix(q, q, q)\n}\n", {}, (3, 10)),
    "embed-of-floats": (HEAD + "model m(x: [B, N]) {\n  return embed(x, 10, D)\n}\n", {}, (3, 10)),
    "rearrange-mismatch": (HEAD + "mixer m(x: [N, D]) {\n  return rearrange(x, \"n (h d) -> n h d\", h = 2, d = 2)\n}\n",
                           {}, (3, 10)),
    "rearrange-rank": (HEAD + "mixer m(x: [N, D]) {\n  return rearrange(x, \"b n d -> b d n\")\n}\n", {}, (3, 10)),
    "rearrange-axis-disappears": (HEAD + "mixer m(x: [N, D]) {\n  return rearrange(x, \"n d -> n\")\n}\n", {},
                                  (3, 10)),
    "linear-tied-weight": (HEAD + "mixer m(x: [N, D], w: [D, N]) {\n  return linear(x, D, weight = w)\n}\n", {},
                           (3, 10)),
    "slice-empty": (HEAD + "mixer m(x: [N, D]) {\n  return x[4:2]\n}\n", {}, (3, 10)),
    "too-many-indices": (HEAD + "mixer m(x: [N, D]) {\n  return x[0, 0, 0]\n}\n", {}, (3, 10)),
    "unknown-attribute": (HEAD + "mixer m(x: [N, D]) {\n  return x.size\n}\n", {}, (3, 10)),
    "argument-given-twice": (HEAD + "mixer m(x: [N, D]) {\n  return linear(x, out = D, out = 3)\n}\n", {}, (3, 29)),
    "definition-unknown-keyword": (HEAD + "block g(x: [N], h = 2) {\n  return x\n}\nmodel m(x: [N]) {\n"
                                   "  return g(x, hh = 3)\n}\n", {}, (6, 15)),
    "definition-missing-tensor": (HEAD + "block g(x: [N], y: [N]) {\n  return x\n}\nmodel m(x: [N]) {\n"
                                  "  return g(x)\n}\n", {}, (6, 10)),
    "definition-too-many-arguments": (HEAD + "block g(x: [N]) {\n  return x\n}\nmodel m(x: [N]) {\n"
                                      "  return g(x, x)\n}\n", {}, (6, 10)),
    "config-parameter-unification": (HEAD + "block f(x: [B, T, D], T = N) {\n  return x\n}\n"
                                     "model m(x: [B, N, H]) {\n  return f(x)\n}\n", {}, (6, 10)),
    "result-count": (HEAD + "mixer m(x: [N]) -> [N], [N] {\n  return x\n}\n", {}, (2, 1)),
    "condition-is-a-tensor": (HEAD + "mixer m(x: [N]) {\n  return if x then x else x\n}\n", {}, (3, 13)),
    "compare-tensors": (HEAD + "mixer m(x: [N]) {\n  if x > 0 { x = x }\n  return x\n}\n", {}, (3, 6)),
    "repeat-out-of-range": (HEAD + "mixer m(x: [N]) {\n  repeat 10000 { x = x + 1 }\n  return x\n}\n", {},
                            (3, 10)),
    "dim-not-positive": ("dim N = 0\nmixer m(x: [N]) {\n  return x\n}\n", {}, (1, 9)),
    "dim-used-before-declared": ("dim Dh = D / 4, D = 32\nmixer m(x: [D]) {\n  return x\n}\n", {}, (1, 10)),
    "option-redeclares-dim": (HEAD + "option N = 3\nmixer m(x: [N]) {\n  return x\n}\n", {}, (2, 8)),
    "set-negative-dim": (HEAD + "mixer m(x: [N]) {\n  return x\n}\n", {"N": -4}, (1, 8)),
    "mask-and-tensor": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = causal() & q)\n}}\n", {}, (3, 30)),
    "unknown-feature-map": (HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, feature = elu2, norm = sum)\n}}\n", {},
                            (3, 23)),
    "ssm-tensor-shape": (HEAD + "mixer m(u: [B, N, D], C: [D, 3]) {\n"
                         "  return mix(v = u, mask = toeplitz(ssm(diag, state = 4, C_re = C)))\n}\n", {}, (3, 10)),
    "ssm-dss-needs-diag": (HEAD + "mixer m(u: [B, N, D]) {\n"
                           "  return mix(v = u, mask = toeplitz(ssm(dplr, state = 4, disc = dss)))\n}\n", {}, (3, 37)),
    "moe-top-k": (HEAD + "block e(x: [B, N, D]) {\n  return x\n}\nmodel m(x: [B, N, D]) {\n"
                  "  return moe(x, expert = e, experts = 2, top_k = 3)\n}\n", {}, (6, 10)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_message(name, golden):
    source, sizes, (line, column) = CASES[name]
    with pytest.raises(seqdsl.SeqError) as info:
        seqdsl.check(source, **sizes)
    err = info.value
    text = err.render() + "\n"
    assert "Traceback" not in text
    assert (err.line, err.column) == (line, column), text
    golden(GOLDEN / f"{name}.txt", text)


def test_at_least_30_distinct_cases():
    assert len(CASES) >= 30


def _render_in(tmp_path: Path, err: seqdsl.SeqError) -> str:
    return err.render().replace(str(tmp_path.resolve()), "<tmp>").replace(str(tmp_path), "<tmp>") + "\n"


def test_import_cycle(tmp_path, golden):
    (tmp_path / "a.seq").write_text('import "b.seq"\ndim N = 4\nmixer m(x: [N]) {\n  return x\n}\n')
    (tmp_path / "b.seq").write_text('dim D = 2\nimport "a.seq"\n')
    with pytest.raises(seqdsl.SeqError) as info:
        seqdsl.check(tmp_path / "a.seq")
    assert (Path(info.value.file).name, info.value.line, info.value.column) == ("b.seq", 2, 1)
    golden(GOLDEN / "import-cycle.txt", _render_in(tmp_path, info.value))


def test_missing_import(tmp_path, golden):
    (tmp_path / "c.seq").write_text('dim N = 4\n  import "nowhere.seq"\nmixer m(x: [N]) {\n  return x\n}\n')
    with pytest.raises(seqdsl.SeqError) as info:
        seqdsl.check(tmp_path / "c.seq")
    assert (info.value.line, info.value.column) == (2, 3)
    golden(GOLDEN / "missing-import.txt", _render_in(tmp_path, info.value))


def test_error_in_an_imported_file_points_into_that_file(tmp_path):
    (tmp_path / "lib.seq").write_text("dim N = 4\nblock f(x: [N]) {\n  return x @ x\n}\n")
    (tmp_path / "main.seq").write_text('import "lib.seq"\nmodel m(x: [N]) {\n  return f(x)\n}\n')
    with pytest.raises(seqdsl.SeqError) as info:
        seqdsl.check(tmp_path / "main.seq")
    err = info.value
    assert (Path(err.file).name, err.line, err.column) == ("lib.seq", 3, 10)
    assert "    return x @ x\n           ^~~~~" in err.render()


def test_missing_file():
    with pytest.raises(seqdsl.SeqError, match="cannot read") as info:
        seqdsl.check(ROOT / "examples" / "no_such_file.seq")
    assert info.value.line == 0
    assert ":0:0" not in info.value.render()


# ---- bugs that were fixed: each test states what the message must be (a new known bug goes
# here as a strict xfail; once fixed, its marker goes, or the case moves into CASES) -------

def _error(source: str, entry: str | None = None, **sizes) -> seqdsl.SeqError:
    with pytest.raises(seqdsl.SeqError) as info:
        seqdsl.check(source, entry, **sizes)
    return info.value


def test_missing_paren_before_return_hints_at_the_paren():
    err = _error(HEAD + "mixer m(x: [N, D]) {\n  y = linear(x, D\n  return y\n}\n")
    assert (err.line, err.column) == (4, 3)
    assert err.hint == "is a ')' missing?", err.render()


def test_end_of_file_hint_names_what_is_expected():
    err = _error("dim N = 4\noption W\n")
    assert err.message == "syntax error: unexpected end of file"
    assert err.hint == "expected '='", err.render()


def test_return_inside_repeat_points_at_the_return():
    err = _error(HEAD + "mixer m(x: [N]) {\n  repeat 2 {\n    return x\n  }\n}\n")
    assert err.message == "'return' inside 'repeat' is not allowed"
    assert (err.line, err.column) == (4, 5), err.render()


def test_rearrange_unbalanced_parenthesis():
    err = _error(HEAD + "mixer m(x: [N, D]) {\n  return rearrange(x, \"n (h d -> n h d\", h = 2)\n}\n")
    assert err.message == "rearrange(): unbalanced parentheses in 'n (h d -> n h d'", err.render()


def test_union_with_decay_names_the_mask_as_written():
    err = _error(HEAD + f"mixer m({QKV}) {{\n  return mix(q, k, v, mask = causal() | decay(0.9), norm = none)\n}}\n")
    assert "scalar" not in err.message and "9/10" not in err.message, err.render()


def test_argument_dtype_message_names_the_type_once():
    err = _error(HEAD + "block g(x: [B, N]) {\n  return x\n}\nmodel m(t: int[B, N]) {\n  return g(t)\n}\n")
    assert err.message == "g: argument 'x' must be float, got int[B, N]", err.render()


def test_unknown_entry_has_no_source_position():
    err = _error("dim N = 4\nmixer m(x: [N]) {\n  return x\n}\n", entry="nope")
    assert err.line == 0
    assert err.render() == "<string>: error: no mixer, block or model named 'nope' (defined: m)"


@pytest.mark.parametrize("source", [
    "dim N = 4\nmixer m(x: [N], x: [N]) {\n  return x\n}\n",
    "dim N = 4\nblock f(y: [N], x: [N], x = 2) {\n  return y\n}\nmodel m(a: [N]) {\n  return f(a, a)\n}\n",
], ids=["entry-inputs", "tensor-and-config"])
def test_duplicate_parameter_name_is_an_error(source):
    err = _error(source)
    assert "'x'" in err.message and "twice" in err.message, err.render()
    assert err.line == 2


# docs/language.md: "Keywords that cannot be names: dim option require import return repeat if
# then else param and or not in true false None". The contextual lexer would read them as
# names wherever only a name can follow (declarations, parameters, `as`, after a ','), e.g.
# `dim return = 3`; the parser's NAME callback turns them back into keywords.
KEYWORD_AS_NAME = {
    "dim": ("dim N = 4, return = 3\nmixer m(x: [N]) {\n  return x\n}\n", (1, 12)),
    "option": ("dim N = 4\noption true = 3\nmixer m(x: [N]) {\n  return x\n}\n", (2, 8)),
    "definition": ("dim N = 4\nmixer if(x: [N]) {\n  return x\n}\n", (2, 7)),
    "tensor-parameter": ("dim N = 4\nmixer m(not: [N]) {\n  return relu(not)\n}\n", (2, 9)),
    "config-parameter": ("dim N = 4\nmixer m(x: [N], then = 2) {\n  return x\n}\n", (2, 17)),
    "repeat-index": ("dim N = 4\nmixer m(x: [N]) {\n  repeat 2 as else { x = x }\n  return x\n}\n", (3, 15)),
    "param": ("dim N = 4\nmixer m(x: [N]) {\n  param return: [N] = zeros()\n  return x\n}\n", (3, 9)),
    "argument": ("dim N = 4\nmixer m(x: [N]) {\n  return concat([x, x], then)\n}\n", (3, 25)),
    "keyword-argument": ("dim N = 4\nmixer m(x: [N]) {\n  return concat([x, x], axis = None)\n}\n", (3, 32)),
}


@pytest.mark.parametrize("where", sorted(KEYWORD_AS_NAME))
def test_keyword_as_a_declared_name(where):
    source, (line, column) = KEYWORD_AS_NAME[where]
    err = _error(source)
    assert (err.line, err.column) == (line, column), err.render()
    assert "keyword" in err.render()
