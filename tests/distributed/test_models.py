"""Whole example models run sequence-parallel equal the one-process run: the output and the
gradients of the inputs and of all the weights (the ranks' gradients summed), with 2 and 4
gloo processes, N = 37 (not a multiple of the ranks, 2P chunks or any block), contiguous
on 2 ranks and zig-zag on 4; BigBird with blocks of 3 at N = 39 (a module built for that N)
on 2; two sequence-parallel mixers on independent branches of one block on 4. One launch of
4 processes; cases in cases_models.py (and there, Longformer's collective bytes counted,
set beside the analysis here)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_dist_model_cases", HERE / "cases_models.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)
NAMES = [name for name, _, _ in cases.cases() if not name.startswith("bytes:")]
TOL = 1e-5       # fp32, relative


@pytest.fixture(scope="module")
def results(launched) -> dict:
    return launched("cases_models.py")


@pytest.mark.parametrize("name", NAMES)
def test_model_equals_one_process(results, name):
    errs = results[name]
    assert isinstance(errs, dict), errs
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"{name}: relative errors above {TOL}: {bad}"


def test_extra_models_are_opt_in():
    """BigBird and Perceiver AR (cases_models.EXTRA) run with SEQDSL_DIST_EXTRA=1 only."""
    if os.environ.get("SEQDSL_DIST_EXTRA") != "1":
        pytest.skip("BigBird and Perceiver AR sequence-parallel: set SEQDSL_DIST_EXTRA=1 (about +10 s)")
    assert {f"{name}-P4" for name in ("bigbird", "perceiver_ar")} <= set(NAMES)


def test_rows_all_reduce_bytes_match_the_analysis(results):
    """The all-reduces that gather Longformer's global rows (x[:, :G] in every layer, the [CLS]
    row x[:, 0]), counted in the comm layer on 2 ranks, against the analysis' per-layer
    formula (2(P − 1)/P of the buffer sent by a ring all-reduce, the buffer independent of N)."""
    import sympy

    from seqdsl.analysis import analyze_graph
    from seqdsl.analysis.distributed import analyze_distributed
    from seqdsl.api import check

    counted = results["bytes:longformer-P2"]
    path, _, extra = cases.LONGFORMER
    sizes = {**cases.SMALL[path], **extra, "B": 2, "N": cases.N}
    c = check(cases.ROOT / "examples" / path, **sizes)
    sec = analyze_distributed(c.graph, analyze_graph(c.graph, c.entry, c.sizes), 2)
    rows = [r for r in sec["layers"] if r["strategy"] == "rows gathered (all-reduce)"]
    assert len(rows) == sizes["L"] + 1                        # one per layer and the [CLS] read
    P, n = sympy.Symbol("P", positive=True, integer=True), sympy.Symbol("N", positive=True, integer=True)
    for r in rows:
        assert n not in sympy.sympify(r["comm_bytes_per_rank"], locals={"P": P, "N": n}).free_symbols
    predicted = sum(r["values"]["comm_bytes_per_rank"] for r in rows)
    assert predicted == pytest.approx(counted["all_reduce"] * 2 * (2 - 1) / 2, rel=1e-12)
    B, G, D = sizes["B"], sizes["G"], sizes["D"]
    assert counted["all_reduce"] == 4 * (sizes["L"] * B * G * D + B * D)


TINY = """dim B, N, D = 8

model first(x: [B, N, D]) -> [B, N, D] {
  g = linear(x[:, :2], D)
  y = concat([g, x[:, 2:]], axis = 1)
  rest = linear(x[:, 1:], D)
  return y + concat([rest, x[:, :1]], axis = 1)
}
"""


def test_rows_read_whole_and_refusals_by_name(tmp_path):
    """Global rows of the split sequence (a prefix slice: replicated; a concat that completes
    the sequence) are written with their distributed form (codegen/distributed/rows.py);
    a part of the sequence read by anything but such a concat carries a refusal naming the
    layer, which raises inside a sequence-parallel block and is a no-op outside one."""
    import seqdsl
    from codegen.distributed import context, hooks
    from seqdsl.errors import SeqError

    (tmp_path / "first.seq").write_text(TINY)
    seqdsl.compile(tmp_path / "first.seq", tmp_path / "out")
    source = (tmp_path / "out" / "first.py").read_text()
    assert "rt.seq_take(x, 1, 0, 2)" in source
    assert "rt.seq_concat([" in source and "('part', 2, N)" in source
    assert "rt.unsharded('rest', 'an axis of size N - 1 depends on the sequence length N')" in source
    hooks.unsharded("rest", "why")                           # no block: nothing happens
    token = context._active.set(context.SequenceParallel())
    try:
        with pytest.raises(SeqError, match="rest: cannot run with the sequence split over ranks"):
            hooks.unsharded("rest", "an axis of size N - 1 depends on the sequence length N")
    finally:
        context._active.reset(token)
