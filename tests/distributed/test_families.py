"""Every mixer family's distributed algorithm equals the one-process runtime: outputs and the
gradients of every input and weight, with 2 and 4 gloo processes, N = 63 (not a multiple of
the ranks, of 2P chunks or of any block), both layouts (2 ranks contiguous, 4 zig-zag).

One launch of 4 processes for the whole module (two-rank cases run on a subgroup); the cases
are in cases_families.py, the comparison in harness.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from codegen import masks as M

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_dist_cases", HERE / "cases_families.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)
NAMES = [name for name, _, _ in cases.cases()]
TOL = 1e-5       # fp32, relative


@pytest.fixture(scope="module")
def results(launched) -> dict:
    return launched("cases_families.py")


@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("control")])
def test_equals_one_process(results, name):
    errs = results[name]
    assert isinstance(errs, dict), errs
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"{name}: relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("P", [2, 4])
def test_control_without_communication_fails(results, P):
    """The comparison can fail: the one-process runtime on a shard, without the states of
    the ranks before it, is far from the whole-sequence answer."""
    errs = results[f"control-P{P}"]
    assert errs["out"] > 1e-2 and errs["grad k"] > 1e-2, errs


def test_refusals_need_no_group():
    """What has no distributed algorithm is refused by name, before any communication."""
    from codegen.distributed import softmax as dsm
    from codegen.distributed.context import SequenceParallel

    q = torch.randn(1, 2, 8, 4)
    ids = torch.zeros(1, 2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="depends on data"):
        dsm.softmax_attention(q, q, q, M.Buckets(ids), scale=0.5, sp=SequenceParallel())
    table = torch.zeros(2, 8, requires_grad=True)
    with pytest.raises(ValueError, match="trainable positional bias"):
        dsm.softmax_attention(q, q, q, M.Causal(0), scale=0.5, bias=("relative", table), sp=SequenceParallel())
