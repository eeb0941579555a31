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


def test_softmax_rule_weighs_memory_under_a_budget():
    """With ``sequence_parallel(memory=...)`` the cost rule keeps Ulysses (less traffic) while
    it fits or holds no more than the ring, and takes the ring when only the ring fits (4
    heads on 4 ranks: one round of Ulysses holds q, k and an exchange of v, more than the
    ring's two K/V blocks at this length); without a budget it weighs traffic only."""
    from codegen.distributed import memory
    from codegen.distributed import softmax as dsm

    class Group:                       # the rule reads the size, strategy and budget only
        def __init__(self, size: int, mem: float | None):
            self.size, self.softmax, self.memory = size, "auto", mem

    bh, n, d = 4, 1 << 16, 64
    shapes = (bh * n * d, bh * n * d, bh * n * d, bh, n)
    base = 4 * bh * n * d * 4 + bh * n * 4
    uly, ring = base + memory.ulysses_bytes(*shapes[:3], 4, 4), base + memory.ring_bytes(*shapes[1:3], bh, n)
    assert ring < uly
    assert dsm.choose(Group(4, None), 4, M.Causal(0), shapes)[0] == "ulysses"
    assert dsm.choose(Group(4, uly), 4, M.Causal(0), shapes)[0] == "ulysses"
    strategy, why = dsm.choose(Group(4, (uly + ring) / 2), 4, M.Causal(0), shapes)
    assert strategy == "ring" and "over the budget" in why
    assert dsm.choose(Group(4, ring / 2), 4, M.Causal(0), shapes)[0] == "ring"       # neither fits: the smaller
    # 8 heads on 2 ranks: rounds of 2 of 8 heads hold less than the ring, whatever the budget
    assert dsm.choose(Group(2, 1.0), 8, M.Causal(0), (bh * n * d,) * 3 + (8, n))[0] == "ulysses"
