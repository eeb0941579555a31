"""One launch of 4 gloo processes per test module: ``launched("cases_x.py")`` runs the file's
``main`` on every rank (two-rank cases on subgroups) and merges what the ranks report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def launched():
    def run(cases_file: str) -> dict:
        import seqdsl.distributed as sd

        os.environ.setdefault("SEQDSL_DIST_TIMEOUT", "60")
        merged: dict = {}
        for one in sd.launch(f"{HERE / cases_file}:main", 4):      # each rank has the cases of its groups
            merged.update(one)
        return merged

    return run
