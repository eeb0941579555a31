"""The training loop: resume equals an uninterrupted run bit for bit; a checkpoint write
killed midway leaves the previous checkpoint; --nproc 2 equals one process; a model that
does not fit the task is refused by name; weight-decay groups and auxiliary losses."""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import replace

import pytest
import torch

import seqdsl
from seqdsl.errors import SeqError
from seqdsl.training import TrainConfig, checkpoint, train
from seqdsl.training.fit import decay_rule, fit
from seqdsl.training.tasks import make_task

H3 = "examples/models/h3.seq"
TASK = {"vocab": 8, "seq_len": 6, "train_examples": 40, "test_examples": 8}
TINY = dict(D=8, L=1, S=4, V=8, N=8)    # N: the task's length (2·3 pairs + 2), given to spare a second check


def _config(tmp_path, **kw) -> TrainConfig:
    base = TrainConfig(H3, "associative_recall", task_options=TASK, sizes=TINY, steps=6, batch=4, lr=3e-3,
                       eval_every=3, eval_batches=1, progress=False, threads=1, plot=False)
    return replace(base, **kw)


def test_resume_equals_uninterrupted(tmp_path):
    whole = train(_config(tmp_path, out=str(tmp_path / "a")))
    first = train(_config(tmp_path, out=str(tmp_path / "b"), stop_at=4, checkpoint_every=2))
    assert first.history[-1]["step"] == 4
    rest = train(_config(tmp_path, out=str(tmp_path / "b"), checkpoint_every=2, resume=True))
    assert _curve(rest.history) == _curve(whole.history)    # the loss curve, bit for bit
    for k, v in whole.state.items():
        assert torch.equal(v, rest.state[k]), k              # the weights, bit for bit
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(whole.history)                  # the log was rewritten from the checkpoint
    with pytest.raises(SeqError, match="written with lr"):
        train(_config(tmp_path, out=str(tmp_path / "b"), resume=True, lr=1e-2))


def _curve(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in history]   # all but the timing


def _killed_writer(folder: str) -> None:
    """Start writing a checkpoint and die (SIGKILL) halfway through the bytes."""
    real = torch.save

    def half_then_die(obj, f, *a, **kw):
        import io

        buf = io.BytesIO()
        real(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = half_then_die
    checkpoint.save({"step": 2, "w": torch.full((1000,), 2.0)}, __import__("pathlib").Path(folder))


def test_killed_write_keeps_previous_checkpoint(tmp_path):
    checkpoint.save({"step": 1, "w": torch.ones(1000)}, tmp_path)
    proc = multiprocessing.get_context("fork").Process(target=_killed_writer, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert list(tmp_path.glob("*.tmp"))                       # it died with a half-written temporary file
    state = checkpoint.load(tmp_path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    checkpoint.save({"step": 3}, tmp_path)                    # the next save still works
    assert checkpoint.load(tmp_path)["step"] == 3


@pytest.mark.slow
def test_nproc2_equals_one_process(tmp_path):
    one = train(_config(tmp_path, steps=4, eval_every=4))
    two = train(_config(tmp_path, steps=4, eval_every=4, nproc=2, out=str(tmp_path / "dp")))
    a = [r["loss"] for r in one.history]
    b = [r["loss"] for r in two.history]
    assert len(a) == len(b) == 5
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-5
    assert [r["accuracy"] for r in one.history] == [r["accuracy"] for r in two.history]
    assert len(checkpoint.load(tmp_path / "dp")["rng"]) == 2            # every process's RNG state


def test_wrong_layout_is_refused_by_name():
    ar = make_task("associative_recall", TASK)
    with pytest.raises(SeqError, match=r"output vocabulary: the model has V = 20, the task needs 8 \(use --set V=8\)"):
        fit(H3, ar.layout, ar.name, sizes=dict(TINY, V=20))
    with pytest.raises(SeqError, match=r"needs logits \[B, N, V\].*returns \[B, Classes\]"):
        fit("examples/models/transformer_encoder.seq", ar.layout, ar.name, sizes=dict(D=8, L=1, H=2, F=8, V=8))
    digits = make_task("digits") if __import__("importlib").util.find_spec("sklearn") else None
    if digits is not None:
        with pytest.raises(SeqError, match=r"feeds \[B, N, C\]; the model's input tokens is int\[B, N\]"):
            fit("examples/models/transformer_encoder.seq", digits.layout, digits.name, sizes=dict(D=8, L=1, H=2))
    with pytest.raises(SeqError, match=r"input tokens length: the model has N = 12, the task needs 8"):
        fit(H3, ar.layout, ar.name, sizes=dict(TINY, N=12))


def _no_decay(file: str, **sizes) -> dict:
    return decay_rule(seqdsl.load(file, **sizes), seqdsl.check(file, **sizes).graph)


def test_weight_decay_groups_from_the_graph():
    h3 = _no_decay(H3, **TINY)
    assert "layers.0.h3_block.h3.y.kernel.log_A_real" in h3       # SSM A (2-D: not caught by the shape rule)
    assert h3["layers.0.h3_block.h3.y.kernel.A_imag"].startswith("kernel.A_imag of mixer")
    assert "layers.0.h3_block.h3.y.kernel.C_re" not in h3          # C is an ordinary weight
    assert "layers.0.h3_block.h3.q.weight" not in h3 and "wte" not in h3
    mamba = _no_decay("examples/models/mamba.seq", D=8, L=1, V=8, N=8)
    a_log = "layers.0.mamba_block.mamba_mixer.A_log"                 # [E, S]: reaches decay() through exp, *
    assert mamba[a_log].startswith("decay of mixer")
    assert "layers.0.mamba_block.mamba_mixer.dt_bias" in mamba
    assert "layers.0.mamba_block.mamba_mixer.linear.weight" not in mamba   # Δ's projection is a matrix: decayed


MOE_LM = """
dim B, N = 8, V = 8, D = 8, E = 2
block ffn(x: [B, N, D]) -> [B, N, D] {
  return mlp(x, 2 * D, act = gelu)
}
model moe_lm(tokens: int[B, N]) -> [B, N, V] {
  x = embed(tokens, V, D)
  x = x + moe(x, expert = ffn, experts = E, top_k = 1, capacity = 1.25, balance = 0.5)
  return linear(x, V)
}
"""


def test_moe_balance_loss_is_added(tmp_path):
    (tmp_path / "moe_lm.seq").write_text(MOE_LM)
    cfg = TrainConfig(str(tmp_path / "moe_lm.seq"), "associative_recall", task_options=TASK, steps=1, batch=2,
                      eval_every=1, eval_batches=1, progress=False, threads=1, plot=False)
    result = train(cfg)
    rec = result.history[0]
    # balance = 0.5: α · E · Σ f_e · P_e is at least α (= 0.5, a perfectly balanced router)
    assert rec["aux_loss"] >= 0.5 - 1e-6


def test_device_is_checked_before_training(tmp_path):
    """--device cuda needs a CUDA device (and one per data-parallel rank); anything else is
    refused by name. (On a GPU machine the same loop runs there with NCCL between ranks.)"""
    with pytest.raises(SeqError, match=r"--device tpu: give cpu or cuda"):
        train(_config(tmp_path, device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(SeqError, match=r"--device cuda: no CUDA device is available here"):
            train(_config(tmp_path, device="cuda"))
    else:
        with pytest.raises(SeqError, match=r"CUDA devices"):
            train(_config(tmp_path, device="cuda", nproc=torch.cuda.device_count() + 1,
                          batch=4 * (torch.cuda.device_count() + 1)))
