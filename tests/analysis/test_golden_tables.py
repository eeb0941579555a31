"""Golden cost tables: every example analysed at its default sizes, reviewed in the diff
(the mixers' rows with every candidate, and the model's total as formulas); every
example's JSON validates against the schema of SPEC §5.

Regenerate with ``pytest tests/analysis --update-golden`` (or SEQDSL_UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import seqdsl
from seqdsl.analysis.schema import REPORT_SCHEMA
from seqdsl.analysis.table import render

try:
    import jsonschema
except ImportError:  # the schema is also checked in test_report.py, which says why it skips
    jsonschema = None

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.seq"))
GOLDEN = ROOT / "tests" / "golden" / "analysis"


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}-{p.stem}" for p in EXAMPLES])
def test_cost_table_matches_golden(path, golden):
    report = seqdsl.analyze(path)
    if jsonschema is not None:
        jsonschema.validate(json.loads(json.dumps(report.to_dict())), REPORT_SCHEMA)
    text = render(report, mixers_only=True).replace(str(ROOT) + "/", "") + "\n"
    golden(GOLDEN / f"{path.parent.name}-{path.stem}.txt", text)
