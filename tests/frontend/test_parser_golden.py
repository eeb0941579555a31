"""Golden pretty-prints of every example's AST (the canonical printer), reviewed in the diff.
Regenerate with ``pytest tests/frontend --update-golden``."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

from seqdsl.frontend.parser import parse_file
from seqdsl.frontend.printer import module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.seq"))
GOLDEN = ROOT / "tests" / "golden" / "ast"

_spec = importlib.util.spec_from_file_location("_conftest", ROOT / "tests" / "conftest.py")
_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conf)


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}-{p.stem}" for p in EXAMPLES])
def test_ast_pretty_print_matches_golden(path, request):
    text = module(parse_file(path))
    golden = GOLDEN / f"{path.parent.name}-{path.stem}.seq.txt"
    if _conf.update_golden(request.config) or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
        if not _conf.update_golden(request.config):
            pytest.fail(f"wrote the missing golden {golden.name}; review it and rerun")
        return
    expected = golden.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "now"))
        pytest.fail(f"{path.name}: the parse changed (rerun with --update-golden if intended)\n{diff[:3000]}")
