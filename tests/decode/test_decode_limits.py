"""Decoding re-checks the requirements that bound the sequence from above (codegen/torch/
sizes.py: ``decode_limit_lines``; codegen/torch/decode.py). ``require`` lines are not checked
while decoding (the sequence dim is bound to the call's length, 1 in a step), so without this
a step past ``require N <= Nmax`` would be accepted silently. Prefill and step refuse the
length they reach past such a bound with the error a forward at that length gives; lower
bounds and divisibility (``N % Bk == 0``) are not bounds: a longer sequence satisfies them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="decoding needs torch")

import seqdsl  # noqa: E402
from seqdsl.errors import SeqError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PERCEIVER = ROOT / "examples" / "models" / "perceiver_ar.seq"
SIZES = {"D": 16, "H": 2, "M": 8, "L": 1, "V": 50, "N": 16, "Nmax": 16}   # N read at each call, ≤ Nmax


@pytest.fixture(scope="module")
def model():
    return seqdsl.load(PERCEIVER, at_call=("N",), **SIZES).eval()


def _forward_error(model, n: int) -> str:
    with pytest.raises(SeqError) as err, torch.no_grad():
        model(torch.zeros(1, n, dtype=torch.long))
    return str(err.value)


def test_only_the_upper_bound_is_a_decoding_limit(model):
    (limit,) = type(model).DECODE_LIMITS                 # not `M <= N` (a lower bound)
    assert limit[0] == 16 and limit[3:] == (31, 1)       # Nmax, at perceiver_ar.seq:31:1


def test_a_step_past_the_bound_is_refused_as_the_forward_is(model):
    refused = _forward_error(model, 17)
    assert "perceiver_ar.seq:31:1" in refused and "at most Nmax" in refused
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    _, state = model.prefill(tokens[:, :14])
    for t in (14, 15):                                   # lengths 15 and 16 are allowed
        _, state = model.step(tokens[:, t], state)
    assert state.position == 16
    for _ in range(2):                                   # 17 is refused, and stays refused
        with pytest.raises(SeqError) as err:
            model.step(tokens[:, 0], state)
        assert str(err.value) == refused
    with pytest.raises(SeqError) as err:                 # a prompt past the bound as well
        model.prefill(torch.zeros(1, 17, dtype=torch.long))
    assert str(err.value) == refused


def test_divisibility_is_not_a_decoding_limit():
    path = ROOT / "examples" / "models" / "local_attention.seq"
    sizes = json.loads((ROOT / "tests" / "codegen" / "small_sizes.json").read_text())["models/local_attention.seq"]
    m = seqdsl.load(path, at_call=("N",), **{**sizes, "L": 1, "B": 1})
    assert "DECODE_LIMITS" not in m.source        # `N % Bk == 0` constrains whole-sequence calls only
    _, state = m.eval().prefill(torch.zeros(1, 16, dtype=torch.long))
    for _ in range(3):                            # lengths 17..19: not multiples of Bk, still decoded
        _, state = m.step(torch.zeros(1, dtype=torch.long), state)
    assert state.position == 19


def test_bounds_through_derived_dims_and_strict_inequalities():
    src = """
dim B = 1, N = 12, V = 11, D = 8, H = 2
dim Nc = N / 2
require Nc <= 8, "at most 8 pairs"
require 2 * N - 1 < 40, "short"
model m(tokens: int[B, N]) -> [B, N, D] {
  t = rearrange(embed(tokens, V, D), "b n (h d) -> b h n d", h = H)
  y = mix(t, t, t, feature = elu1, mask = causal(), norm = sum)
  return rearrange(y, "b h n d -> b n (h d)")
}
"""
    m = seqdsl.load(src, at_call=("N",)).eval()
    assert [lim[:2] for lim in type(m).DECODE_LIMITS] == [(16, "at most 8 pairs"), (20, "short")]
    _, state = m.prefill(torch.zeros(1, 15, dtype=torch.long))
    _, state = m.step(torch.zeros(1, dtype=torch.long), state)         # N = 16: Nc = 8
    with pytest.raises(SeqError) as err:
        m.step(torch.zeros(1, dtype=torch.long), state)
    assert str(err.value) == _forward_error(m, 17) and ":4:1" in str(err.value)
