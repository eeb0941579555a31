"""seqdsl train --nproc P --seq-parallel S: S ranks share each sequence (split along N),
P/S data-parallel groups split the batch; the per-step losses, the evaluations and the final
weights equal one process's (fp32, 1e-5 relative), for a causal softmax model (zig-zag
layout) and a selective-scan one (contiguous, the loss on the answer only: one rank holds
it); metrics, checkpoints and --resume work (rank 0 writes); what cannot be split is
refused by name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import seqdsl
from seqdsl.distributed import launch, preferred_layout
from seqdsl.errors import SeqError
from seqdsl.training import TrainConfig, checkpoint, train
from seqdsl.training import parallel as par
from seqdsl.training.fit import fit
from seqdsl.training.loop import loss_terms
from seqdsl.training.tasks import Batch, make_task

# induction heads with seq_len 10: N = 11, not a multiple of S = 2 nor of the 2S zig-zag chunks
TASK = {"vocab": 8, "seq_len": 10, "train_examples": 40, "test_examples": 8}
DECODER = dict(D=8, H=2, L=1, F=16, V=8)
MAMBA = ("examples/models/mamba.seq", dict(D=8, L=1, V=8))


def _decoder(tmp_path: Path) -> str:
    """transformer_decoder.seq without its dropouts (each rank would draw its own masks)."""
    text = Path("examples/models/transformer_decoder.seq").read_text()
    assert text.count("dropout(") == 3
    path = tmp_path / "transformer_decoder.seq"
    path.write_text(text.replace("dropout(", "("))
    return str(path)


def _config(file: str, sizes: dict, **kw) -> TrainConfig:
    base = TrainConfig(file, "induction_heads", task_options=TASK, sizes=sizes, steps=4, batch=4, lr=3e-3,
                       eval_every=2, eval_batches=2, progress=False, threads=1, plot=False)
    return replace(base, **kw)


def _still(config: TrainConfig) -> set[str]:
    """Parameters whose gradient is zero in exact arithmetic (softmax is invariant to a shift
    shared by every key: the key projection's bias), found in fp64: Adam turns each run's
    rounding noise there into steps of ±lr, so their values are no test of the split (the
    outputs do not depend on them)."""
    task = make_task(config.task, config.task_options)
    model = fit(config.file, task.layout, task.name, sizes=config.sizes, seed=config.seed,
                batch=config.batch).model.double()
    loss, _, _ = loss_terms(model, task.batch("train", 0, config.batch, config.seed), task.layout.kind)
    loss.backward()
    norms = {k: float(p.grad.norm()) for k, p in model.named_parameters()}
    return {k for k, v in norms.items() if v <= 1e-12 * max(norms.values())}


def _same(one, other, still: set[str]) -> None:
    a = [(r["split"], r["step"]) for r in one.history]
    assert a == [(r["split"], r["step"]) for r in other.history]           # train steps and evaluations
    err = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(one.history, other.history))
    assert err < 1e-5, err
    assert [r["accuracy"] for r in one.history] == [r["accuracy"] for r in other.history]
    for k, v in one.state.items():
        if k not in still:
            rel = float((v - other.state[k]).norm() / v.norm().clamp_min(1e-12))
            assert rel < 1e-5, (k, rel)


@pytest.mark.slow
def test_causal_softmax_zigzag_equals_one_process(tmp_path):
    cfg = _config(_decoder(tmp_path), DECODER)
    one = train(cfg)
    still = _still(cfg)
    assert still == {"layers.0.decoder_layer.causal_self_attention.k.bias"}      # the shift invariance only
    assert preferred_layout(seqdsl.check(cfg.file).graph) == "zigzag"             # what auto picks here
    two = train(replace(cfg, nproc=2, seq_parallel=2, out=str(tmp_path / "sp2")))    # zig-zag, auto
    _same(one, two, still)
    lines = (tmp_path / "sp2" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [r["step"] for r in one.history]   # one rank wrote it
    four = train(replace(cfg, nproc=4, seq_parallel=2))                             # 2 groups × 2 ranks
    _same(one, four, still)


def _rank(config: TrainConfig):
    return train(config)


@pytest.mark.slow
def test_selective_scan_answer_loss_equals_one_process_and_resumes(tmp_path):
    cfg = _config(*MAMBA, task_options=dict(TASK, loss="answer"))   # the loss lives on the last rank
    assert preferred_layout(seqdsl.check(cfg.file).graph) == "contiguous"
    one = train(cfg)
    # started as torchrun would (a process group first, then train() in each rank)
    two = launch(f"{__file__}:_rank", 2, replace(cfg, nproc=2, seq_parallel=2), threads=1,
                 preload=("torch._dynamo", "seqdsl.training.loop"))[0]
    _same(one, two, set())
    # DP × SP stopped after 2 steps, resumed on one group of 2: the same run as one process
    out = str(tmp_path / "dpsp")
    train(replace(cfg, nproc=4, seq_parallel=2, out=out, stop_at=2, checkpoint_every=2))
    assert len(checkpoint.load(Path(out))["rng"]) == 4                              # every rank's RNG state
    rest = train(replace(cfg, nproc=2, seq_parallel=2, out=out, checkpoint_every=2, resume=True))
    _same(one, rest, set())
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(one.history)


CLASSIFIER = """dim B, N = 30, V = 16, D = 8, H = 2, Classes = 10

model cls_attn(tokens: int[B, N]) -> [B, Classes] {
  x = embed(tokens, V, D)
  q = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  k = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  v = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  y = mix(q, k, v, score = dot(), norm = softmax)
  x = x + linear(rearrange(y, "b h n d -> b n (h d)"), D)
  return linear(x[:, 0], Classes)
}
"""


@pytest.mark.slow
def test_replicated_output_counts_once(tmp_path):
    """A classifier read from the [CLS] row: its logits are the same on both ranks (each
    computes the whole loss, whose backward counts 1/S there), reported once; the zig-zag
    layout forced on a model whose own choice is contiguous."""
    (tmp_path / "cls.seq").write_text(CLASSIFIER)
    cfg = TrainConfig(str(tmp_path / "cls.seq"), "listops", task_options={
        "min_length": 5, "max_length": 30, "max_depth": 3, "max_args": 3, "train_examples": 40, "test_examples": 8},
        steps=4, batch=4, lr=3e-3, eval_every=2, eval_batches=2, progress=False, threads=1, plot=False)
    one = train(cfg)
    still = _still(cfg)
    assert still == {"linear_1.bias"}                 # the key projection's bias (shift invariance)
    _same(one, train(replace(cfg, nproc=2, seq_parallel=2, layout="zigzag")), still)


def test_refused_by_name(tmp_path):
    cfg = _config(*MAMBA)
    with pytest.raises(SeqError, match=r"--seq-parallel 3 must divide --nproc 4"):
        train(replace(cfg, nproc=4, seq_parallel=3))
    with pytest.raises(SeqError, match=r"--batch 4: the 3 data-parallel groups"):
        train(replace(cfg, nproc=6, seq_parallel=2))
    with pytest.raises(SeqError, match=r"--layout diagonal: give auto, contiguous or zigzag"):
        train(replace(cfg, nproc=2, seq_parallel=2, layout="diagonal"))
    with pytest.raises(SeqError, match=r"--seq-parallel 2 with --device cuda: .* gloo \(CPU\) only"):
        train(replace(cfg, nproc=2, seq_parallel=2, device="cuda"))
    # N = 7 cannot give 4 ranks two chunks each (zig-zag: a causal softmax model's layout)
    short = _config(_decoder(tmp_path), DECODER, task_options=dict(TASK, seq_len=6))
    with pytest.raises(SeqError, match=r"--seq-parallel 4 with the zigzag layout needs a sequence of at least 8 "
                                       r"positions .* the task's is 7"):
        train(replace(short, nproc=4, seq_parallel=4))
    # packed rows: refused before any process starts (the batch's doc_ids)
    ids = torch.zeros(2, 11, dtype=torch.long)
    with pytest.raises(SeqError, match=r"packed rows \(doc_ids\) and sequence parallelism"):
        par.shard(Batch(ids, ids, doc_ids=ids), par.Ranks(2, 0, 1, 0, 2), "lm")


TABLE = """dim B, N = 64, V = 8, D = 8

model table_lm(tokens: int[B, N]) -> [B, N, V] {
  param pos: [N, D] = normal(0.02)
  return linear(embed(tokens, V, D) + pos, V)
}
"""


@pytest.mark.slow
def test_position_table_is_built_for_the_task_length(tmp_path):
    """A weight over N (a learned position table, as Longformer's or Hyena's z offset): the
    split module reads N at each call, yet its table is built for the task's N (not the
    file's 64), so the weights and the checkpoint are one process's."""
    (tmp_path / "table.seq").write_text(TABLE)
    cfg = _config(str(tmp_path / "table.seq"), {})
    one = train(cfg)
    assert one.state["pos"].shape == (11, 8)
    _same(one, train(replace(cfg, nproc=2, seq_parallel=2)), set())


# layers that read across the split sequence without a distributed form (docs/distributed.md)
REFUSED = {
    "pooled": ("x + rearrange(mean(x, axis = 1), \"b d -> b 1 d\")",
               r"mean: cannot run with the sequence split over ranks: mean over the N axis"),
    "mixed": ("rearrange(linear(rearrange(x, \"b n d -> b d n\"), N), \"b d n -> b n d\")",
              r"linear: cannot run with the sequence split over ranks: acts along the N axis"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_layer_the_plan_cannot_split_is_refused_by_name(tmp_path, name):
    body, message = REFUSED[name]
    (tmp_path / "m.seq").write_text(f"dim B, N = 64, V = 8, D = 8\n\nmodel m(tokens: int[B, N]) -> [B, N, V] {{\n"
                                    f"  x = embed(tokens, V, D)\n  return linear({body}, V)\n}}\n")
    with pytest.raises(SeqError, match=message):
        train(_config(str(tmp_path / "m.seq"), {}, nproc=2, seq_parallel=2, steps=1))
