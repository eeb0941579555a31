"""The report: JSON schema, sympy round trip, every op kind has a formula, big-O, plot."""

from __future__ import annotations

import json

import pytest
import sympy

import seqdsl
from seqdsl.analysis import big_o
from seqdsl.analysis.estimates import Estimates
from seqdsl.analysis.ops import FORMULAS, formula, missing_kinds
from seqdsl.analysis.schema import REPORT_SCHEMA
from seqdsl.ir.graph import OpKind

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the report's JSON")

N = sympy.Symbol("N", positive=True, integer=True)
D = sympy.Symbol("D", positive=True, integer=True)


def test_every_op_kind_has_a_formula():
    assert missing_kinds() == set()


def test_registering_a_formula_twice_raises():
    with pytest.raises(AssertionError, match="twice"):
        formula(OpKind.LINEAR)(lambda g, n, ctx: Estimates())
    assert OpKind.LINEAR in FORMULAS


def test_estimates_add():
    a = Estimates(flops=N, matmul_flops=N, activation_bytes=D, hbm_bytes=N, param_count=D)
    b = a + a
    assert b.flops == 2 * N and b.param_count == 2 * D


@pytest.mark.parametrize("expr, expected", [
    (4 * N**2 * D + N * D**2, "O(N**2)"),
    (N * sympy.log(N) / sympy.log(2) + 7 * N, "O(N*log(N))"),
    (D**2 + 3, "O(1)"),
    (N * sympy.log(2 * N), "O(N*log(N))"),
    (N / 64 * D, "O(N)"),
    (sympy.Integer(0), "O(1)"),
])
def test_big_o(expr, expected):
    assert big_o(expr, N) == expected


def test_json_matches_the_schema_and_expressions_parse_back():
    report = seqdsl.analyze("examples/mixers/softmax_attention.seq", N=2048, backward=True)
    data = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(data, REPORT_SCHEMA)
    assert data["sizes"]["N"] == 2048 and data["pass"] == "forward+backward"
    for row in data["layers"] + [data["total"]]:
        for key in ("flops", "matmul_flops", "param_count", "activation_bytes", "hbm_bytes"):
            expr = sympy.sympify(row[key])
            free = {str(s) for s in expr.free_symbols}
            subs = {s: data["sizes"][str(s)] for s in expr.free_symbols if str(s) in data["sizes"]}
            assert free <= set(data["sizes"]), (key, free)
            assert float(expr.subs(subs)) == pytest.approx(row["values"][key], rel=1e-9)


def test_causal_attention_skips_half_the_tiles():
    dense = seqdsl.analyze("examples/mixers/softmax_attention.seq", N=4096, causal=0)
    causal = seqdsl.analyze("examples/mixers/softmax_attention.seq", N=4096, causal=1)
    ratio = dense.value(dense.total.matmul_flops) / causal.value(causal.total.matmul_flops)
    assert 1.9 < ratio < 2.0  # (T/2)(T+1) of T² tiles of 64 at N=4096: 64²/(64·65/2)


def test_sliding_window_is_linear_in_n_and_tiled_wins():
    report = seqdsl.analyze("examples/mixers/sliding_window.seq", N=16384)
    row = report.to_dict()["layers"][0]
    assert row["algorithm"] == "tiled"
    assert row["big_o"]["time"] == "O(N)"
    dense = next(c for c in row["candidates"] if c["algorithm"] == "materialized")
    tiled = next(c for c in row["candidates"] if c["algorithm"] == "tiled")
    assert dense["estimated_seconds"] > 20 * tiled["estimated_seconds"]


def test_window_tile_count_closed_form_equals_enumeration():
    from seqdsl.analysis.masks import closed_pairs, closed_tiles, exact_counts
    from seqdsl.ir import mix as M

    for n, w, b in [(1024, 256, 64), (4096, 512, 128), (512, 64, 64)]:
        mask = M.And(M.Causal(), M.Window(sympy.Integer(w)))
        pairs, tiles = exact_counts(mask, n, n, b, b)
        assert closed_pairs(mask, sympy.Integer(n), sympy.Integer(n)) == pairs
        assert closed_tiles(mask, sympy.Integer(n), sympy.Integer(n), b, b) == tiles


@pytest.mark.parametrize("mask_text", [
    "causal()", "full()", "local(64)", "causal() & local(64)", "window(32)", "causal() & strided(8)",
    "global_tokens(16)", "key_range(0, 32)", "butterfly(64)", "random_blocks(2, block = 64)",
])
def test_closed_pair_counts_equal_enumeration(mask_text):
    """Every closed form of the mask algebra against counting the kept pairs one by one."""
    from seqdsl.analysis.masks import closed_pairs, exact_counts

    text = f"dim N = 512, D = 16\nmixer m(q: [N, D], k: [N, D], v: [N, D]) {{ return mix(q, k, v, mask = {mask_text}) }}"
    checked = seqdsl.check(text)
    mask = checked.mixers[0].spec.mask
    n = 512
    closed = closed_pairs(mask, sympy.Integer(n), sympy.Integer(n))
    pairs, _ = exact_counts(mask, n, n, 64, 64)
    assert closed is not None and float(closed) == pytest.approx(pairs, rel=0.02), (closed, pairs)


def test_forced_algorithm_and_unknown_algorithm():
    report = seqdsl.analyze("examples/mixers/gla.seq", algorithms={"mix": "recurrent"})
    assert report.layers[0].algorithm == "recurrent"
    with pytest.raises(ValueError, match="not available"):
        seqdsl.analyze("examples/mixers/gla.seq", algorithms={"mix": "fft"})


def test_plot_marks_crossovers(tmp_path):
    from seqdsl.analysis.plot import plot_costs

    out = tmp_path / "cost.png"
    crossings = plot_costs("examples/mixers/s4d.seq", None, {}, out, n_values=[2 ** k for k in range(10, 21, 2)])
    assert out.stat().st_size > 10_000
    assert crossings >= 1
