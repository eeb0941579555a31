"""docs/modules.md quotes the generated Mamba-130m module: each quoted block must stand, line
for line, in what `seqdsl compile examples/models/mamba.seq` writes today, and the file must
stay a structured module of a few hundred lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_the_generated_mamba_in_the_docs_is_the_generated_one(tmp_path):
    compiled = seqdsl.compile(ROOT / "examples/models/mamba.seq", tmp_path)
    source = compiled.source.splitlines()
    assert len(source) <= 400
    assert "for layer in self.layers:" in compiled.source
    doc = (ROOT / "docs" / "modules.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        lines = block.rstrip("\n").splitlines()
        starts = [i for i, line in enumerate(source) if line == lines[0]]
        assert any(source[i:i + len(lines)] == lines for i in starts), f"not in the generated module:\n{block}"
    assert f"is {len(source)} lines" in doc
