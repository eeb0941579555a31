"""Golden error messages: each bad input gives exactly this message at exactly this place.

The expected text is the whole rendered error (location, message, source line, caret,
hint) stored in tests/golden/errors/<case>.txt; regenerate with --update-golden and review.
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


def test_import_cycle_and_missing_import(tmp_path):
    (tmp_path / "a.seq").write_text('import "b.seq"\ndim N = 4\nmixer m(x: [N]) {\n  return x\n}\n')
    (tmp_path / "b.seq").write_text('import "a.seq"\n')
    with pytest.raises(seqdsl.SeqError, match=r"import cycle: a\.seq -> b\.seq -> a\.seq") as info:
        seqdsl.check(tmp_path / "a.seq")
    assert info.value.line == 1
    (tmp_path / "c.seq").write_text('import "nowhere.seq"\n')
    with pytest.raises(seqdsl.SeqError, match="cannot import 'nowhere.seq': no such file") as info:
        seqdsl.check(tmp_path / "c.seq")
    assert (info.value.line, info.value.column) == (1, 1)
