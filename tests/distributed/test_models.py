"""Whole example models run sequence-parallel equal the one-process run: the output and the
gradients of the inputs and of all the weights (the ranks' gradients summed), with 2 and 4
gloo processes, N = 37 (not a multiple of the ranks, 2P chunks or any block), contiguous
on 2 ranks and zig-zag on 4. One launch of 4 processes; cases in cases_models.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_dist_model_cases", HERE / "cases_models.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)
NAMES = [name for name, _, _ in cases.cases()]
TOL = 1e-5       # fp32, relative


@pytest.fixture(scope="module")
def results() -> dict:
    import seqdsl.distributed as sd

    os.environ.setdefault("SEQDSL_DIST_TIMEOUT", "60")
    merged: dict = {}
    for one in sd.launch(f"{HERE / 'cases_models.py'}:main", 4):        # each rank has the cases of its groups
        merged.update(one)
    return merged


@pytest.mark.parametrize("name", NAMES)
def test_model_equals_one_process(results, name):
    errs = results[name]
    assert isinstance(errs, dict), errs
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"{name}: relative errors above {TOL}: {bad}"


TINY = """dim B, N, D = 8

model first(x: [B, N, D]) -> [B, 1, D] {
  return linear(x[:, :1], D)
}
"""


def test_a_slice_of_the_sequence_is_refused_by_name(tmp_path):
    """A layer that takes some positions of the split sequence (Longformer's and BigBird's
    global tokens, a [CLS] read) carries a refusal naming the layer, which raises inside a
    sequence-parallel block and is a no-op outside one."""
    import seqdsl
    from codegen.distributed import context, hooks
    from seqdsl.errors import SeqError

    (tmp_path / "first.seq").write_text(TINY)
    seqdsl.compile(tmp_path / "first.seq", tmp_path / "out")
    source = (tmp_path / "out" / "first.py").read_text()
    assert "rt.unsharded('slice', 'takes part of the N axis" in source
    hooks.unsharded("slice", "why")                          # no block: nothing happens
    token = context._active.set(context.SequenceParallel())
    try:
        with pytest.raises(SeqError, match="slice: cannot run with the sequence split over ranks"):
            hooks.unsharded("slice", "takes part of the N axis")
    finally:
        context._active.reset(token)
