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
NAMES = [name for name, _, _ in cases.cases() if not name.startswith("refusal")]
TOL = 1e-5       # fp32, relative


@pytest.fixture(scope="module")
def results() -> dict:
    import seqdsl.distributed as sd

    os.environ.setdefault("SEQDSL_DIST_TIMEOUT", "60")
    return sd.launch(f"{HERE / 'cases_models.py'}:main", 4)[0]


@pytest.mark.parametrize("name", NAMES)
def test_model_equals_one_process(results, name):
    errs = results[name]
    assert isinstance(errs, dict), errs
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"{name}: relative errors above {TOL}: {bad}"


def test_global_tokens_refused_by_name(results):
    """Longformer's global tokens slice the first positions of the split sequence: the module
    refuses, naming the layer and the reason, instead of answering wrongly."""
    msg = results["refusal-P2"]["refused"]
    assert msg is not None and "slice" in msg and "split over ranks" in msg, msg
