"""Shared test options and fixtures.

``--update-golden`` (or SEQDSL_UPDATE_GOLDEN=1) rewrites golden files instead of comparing;
the ``golden`` fixture does the comparison for every golden-file test.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files (review the diff before committing)")


def update_golden(config) -> bool:
    return bool(config.getoption("--update-golden")) or os.environ.get("SEQDSL_UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden(request):
    """``golden(path, text)``: compare ``text`` with the golden file, or write it when updating."""

    def compare(path: Path, text: str) -> None:
        if update_golden(request.config) or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if not update_golden(request.config):
                pytest.fail(f"wrote the missing golden {path.name}: review it and rerun")
            return
        expected = path.read_text()
        if text != expected:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "now"))
            pytest.fail(f"{path.name} changed (rerun with --update-golden if intended)\n{diff[:4000]}")

    return compare
