"""Golden pretty-prints of every example's AST (the canonical printer), reviewed in the diff.
Regenerate with ``pytest tests/frontend --update-golden``."""

from __future__ import annotations

from pathlib import Path

from seqdsl.frontend.parser import parse_file
from seqdsl.frontend.printer import module

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "ast"


def test_ast_pretty_print_matches_golden(example, golden):
    golden(GOLDEN / f"{example.parent.name}-{example.stem}.seq.txt", module(parse_file(example)))


def test_every_golden_belongs_to_an_example():
    examples = {f"{p.parent.name}-{p.stem}.seq.txt" for p in (ROOT / "examples").glob("*/*.seq")}
    stale = sorted(p.name for p in GOLDEN.glob("*.txt") if p.name not in examples)
    assert not stale, f"goldens of examples that no longer exist (delete them): {stale}"
