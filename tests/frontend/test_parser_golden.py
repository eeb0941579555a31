"""Golden pretty-prints of every example's AST (the canonical printer), reviewed in the diff.
Regenerate with ``pytest tests/frontend --update-golden``."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqdsl.frontend.parser import parse_file
from seqdsl.frontend.printer import module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.seq"))
GOLDEN = ROOT / "tests" / "golden" / "ast"



@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}-{p.stem}" for p in EXAMPLES])
def test_ast_pretty_print_matches_golden(path, golden):
    golden(GOLDEN / f"{path.parent.name}-{path.stem}.seq.txt", module(parse_file(path)))
