"""docs/examples.md: one row per system of SPEC §7, in its order, each with the parameter count
the checker gives at the file's defaults (the checks are shared with tests/test_examples.py
through the session cache, so this costs little in the full suite)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "examples.md"
MODELS = ("transformer_encoder transformer_decoder vit longformer bigbird local_attention sparse_transformer "
          "linformer performer linear_transformer spectral_kernel reformer sinkhorn synthesizer luna "
          "transformer_ls perceiver_ar block_recurrent s4 s4d dss dlr s5 h3 h3_hybrid gss mega mega_chunk spade "
          "hyena retnet gla mamba switch_moe deq context_pool wide_single_layer hierarchical memory_transformer "
          "pixelfly").split()
ROW = re.compile(r"^\| (\d+) \| \[(\w+)\]\(\.\./examples/models/(\w+)\.seq\) \| (.+?) \| [\d.]+[KMB] \(([\d,]+)\) \| (.+) \|$")


def rows() -> list[re.Match]:
    return [m for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def test_one_row_per_model_in_spec_order():
    found = rows()
    assert [m.group(2) for m in found] == MODELS
    assert all(m.group(2) == m.group(3) for m in found)
    assert [int(m.group(1)) for m in found] == list(range(1, len(MODELS) + 1))
    assert all(m.group(4).strip() and m.group(6).strip() for m in found), "follows and deviations are filled"


def test_parameter_counts_are_the_files(checked_example):
    stale = []
    for m in rows():
        checked = checked_example(ROOT / "examples" / "models" / f"{m.group(2)}.seq")
        count = int(checked.value(checked.param_count))
        if count != int(m.group(5).replace(",", "")):
            stale.append(f"{m.group(2)}: the doc says {m.group(5)}, the file has {count:,}")
    assert not stale, "docs/examples.md is out of date:\n" + "\n".join(stale)


def test_readme_links_the_table():
    assert "docs/examples.md" in (ROOT / "README.md").read_text()
