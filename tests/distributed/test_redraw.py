"""A redrawn random feature map under sequence parallelism, 2 gloo processes whose global
generators are seeded apart (as ``seqdsl train --seq-parallel`` seeds them): the ranks share
their group's first draw, so the sharded training call (N = 33, 17 + 16 rows) equals one
process with that ε, output and gradients. The control keeps each rank's own draw: its error
is large (the comparison can fail). Cases in cases_redraw.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TOL = 1e-5       # fp32, relative


@pytest.fixture(scope="module")
def results() -> dict:
    import seqdsl.distributed as sd

    os.environ.setdefault("SEQDSL_DIST_TIMEOUT", "60")
    return sd.launch(f"{HERE / 'cases_redraw.py'}:main", 2)[0]


def test_the_group_shares_one_draw_and_equals_one_process(results):
    errs = results["shared"]
    assert errs.pop("eps spread") == 0.0
    assert {"out", "grad q", "grad k", "grad v"} <= set(errs) and len(errs) >= 6   # and μ, Σ
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


def test_control_each_rank_its_own_draw_differs(results):
    errs = results["control"]
    assert errs["eps spread"] > 0.1 and errs["out"] > 1e-2, errs
