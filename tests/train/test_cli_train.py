"""`seqdsl compare` and `seqdsl train` from the command line: the table, the plot, the
files of a run, and the error for a model that does not fit."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from seqdsl.cli import app

runner = CliRunner()
# The sizes of tests/train/test_loop.py: in one pytest process the checked model is reused.
TINY = ["--task", "associative_recall", "--task-opt", "vocab=8", "--task-opt", "seq_len=6", "--task-opt",
        "test_examples=4", "--set", "D=8", "--set", "L=1", "--set", "V=8", "--set", "S=4", "--set", "N=8",
        "--steps", "2", "--batch", "4", "--eval-every", "2", "--threads", "1", "--no-progress"]


def test_compare_prints_the_table_and_draws_one_plot(tmp_path):
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", "examples/models/h3.seq", *TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | eval accuracy | eval loss | parameters | FLOPs/token (fwd) | wall s")
    assert rows[1].startswith("| h3.seq |") and len(rows) == 2
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.md").is_file()
    for stem in ("h3",):
        records = [json.loads(line) for line in (out / stem / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 2] and records[-1]["split"] == "valid"
        assert records[-1]["flops"] == 2 * records[0]["flops"] > 0      # FLOPs from the analysis, per step
        assert (out / stem / "checkpoint.pt").is_file() and (out / stem / "metrics.png").is_file()


def test_compare_refuses_a_size_no_file_declares(tmp_path):
    res = runner.invoke(app, ["compare", "examples/models/h3.seq", *TINY, "--set", "Q=3", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "--set Q: no file declares it" in res.output


def test_train_refuses_a_model_that_does_not_fit():
    res = runner.invoke(app, ["train", "examples/models/transformer_encoder.seq", "--task", "associative_recall",
                              "--set", "V=20", "--set", "N=42"])
    assert res.exit_code == 1
    assert "needs logits [B, N, V] per position; the model returns [B, Classes]" in res.output
    res = runner.invoke(app, ["train", "examples/models/h3.seq", "--task", "nope"])
    assert res.exit_code == 1 and "unknown task 'nope'" in res.output


def test_train_seq_parallel_options_reach_the_loop():
    res = runner.invoke(app, ["train", "examples/models/h3.seq", *TINY, "--nproc", "3", "--seq-parallel", "2"])
    assert res.exit_code == 1 and "--seq-parallel 2 must divide --nproc 3" in res.output
    res = runner.invoke(app, ["train", "examples/models/h3.seq", *TINY, "--nproc", "2", "--seq-parallel", "2",
                              "--layout", "spiral"])
    assert res.exit_code == 1 and "--layout spiral: give auto, contiguous or zigzag" in res.output
