"""The decoding plan (codegen/decode/plan.py) on small files: each class of layer is read from
the IR — position-wise, positional (``seq=True`` in the generated source), stateful (a slot
per call, in order) — and everything that reads across the sequence is refused with the
layer and its position."""

from __future__ import annotations

import pytest

import seqdsl
from codegen.decode.plan import plan as decode_plan

HEAD = "dim B, N = 64, D = 8, V = 10, H = 2, Lmax = 128\n"


def _plan(body: str):
    checked = seqdsl.check(HEAD + "model m(tokens: int[B, N]) -> [B, N, V] {\n  x = embed(tokens, V, D)\n"
                           + body + "\n}\n")
    return decode_plan(checked.graph, {"B", "N"})


def test_stateful_layers_are_slots_in_call_order():
    p = _plan("""  c = conv1d(x, 4, causal = true)
  q = rearrange(linear(c, D), "b n (h d) -> b h n d", h = H)
  y = mix(q, q, q, score = dot(scale = 0.5), mask = causal() & window(8), norm = softmax)
  z = mix(v = rearrange(y, "b h n d -> b n (h d)"), mask = toeplitz(ssm(diag, state = 4)))
  return linear(z + sinusoidal(N, D), V)""")
    assert p.ok, p.reason
    assert [s.kind for s in p.slots] == ["conv1d", "softmax", "toeplitz"]
    assert len(p.positional) == 1                  # sinusoidal(N, D): the token's position in a step


def test_positions_over_other_axes_are_not_positional():
    p = _plan("  return linear(x * arange(D)[None, None, :], V)")
    assert p.ok and not p.positional


@pytest.mark.parametrize("body,why", [
    ("  return linear(x - mean(x, axis = 1, keep = true), V)", "over the N axis reads every position"),
    ("  return linear(x / (N - 1), V)", "uses the length N as a number"),
    ("  return linear(concat([x[:, 1:], x[:, :1]], axis = 1), V)", "an axis of size N - 1 depends on"),
    ("  return linear(x[:, 0, None, :] + x, V)", "takes part of the N axis"),
    ("  param t: [Lmax, D] = normal(1)\n  return linear(x + t[:N], V)", "takes the first N rows"),
    ("  return linear(conv1d(x, 3, causal = false), V)", "non-causal"),
    ("  q = rearrange(x, \"b n (h d) -> b h n d\", h = H)\n"
     "  return linear(rearrange(mix(q, q, q, mask = full(), norm = softmax), \"b h n d -> b n (h d)\"), V)",
     "not causal"),
])
def test_what_reads_across_the_sequence_is_refused_by_place(body, why):
    p = _plan(body)
    assert not p.ok and why in p.reason, p.reason
    assert p.reason.startswith("<string>:"), p.reason          # file:line:col of the layer


def test_a_module_marks_its_positional_ops(tmp_path):
    model = seqdsl.load(HEAD + """model m(tokens: int[B, N]) -> [B, N, V] {
  return linear(embed(tokens, V, D) + sinusoidal(N, D) + arange(N)[:, None], V)
}""", D=8, V=10)
    assert "rt.sinusoidal(N, 8, seq=True)" in model.source and "rt.arange(N, seq=True)" in model.source
    assert model.can_decode[0]
