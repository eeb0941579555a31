"""Shared test options: ``--update-golden`` rewrites golden files instead of comparing."""

from __future__ import annotations

import os


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files (review the diff before committing)")


def update_golden(config) -> bool:
    return bool(config.getoption("--update-golden")) or os.environ.get("SEQDSL_UPDATE_GOLDEN") == "1"
