"""The training loop behind ``seqdsl train`` and ``seqdsl.training``.

One step: the global batch of the step (a function of seed and step: no data cursor),
this rank's rows of it, the loss as a sum over the targets divided by the global target
count (plus the model's auxiliary losses), backward, gradients summed over ranks, norm
clipping, AdamW, the schedule. So P data-parallel processes compute what one process
computes, up to the order of the sums; a resumed run repeats an uninterrupted one bit for
bit on a CPU (same batches, same states, same RNG). With ``--seq-parallel S`` each group of
S ranks also splits every sequence along N (``parallel.py``); the same equality holds.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from seqdsl.errors import SeqError
from seqdsl.training import checkpoint
from seqdsl.training import parallel as par
from seqdsl.training.fit import Fitted, adopt, export, fit
from seqdsl.training.metrics import append_jsonl, plot_runs, write_jsonl
from seqdsl.training.optim import make_optimizer, make_scheduler
from seqdsl.training.tasks import Batch, Task, make_task

# Settings a resumed run must share with the run that wrote the checkpoint.
RESUME_KEYS = ("file", "task", "task_options", "entry", "sizes", "steps", "batch", "lr", "warmup", "weight_decay",
               "clip", "seed", "pretrain_steps", "pretrain_applications")


@dataclass
class TrainConfig:
    """What ``seqdsl train`` takes (see ``seqdsl train --help`` for each option)."""

    file: str
    task: str
    task_options: dict = field(default_factory=dict)
    entry: str | None = None
    sizes: dict = field(default_factory=dict)
    steps: int = 1000
    batch: int = 32
    lr: float = 1e-3
    warmup: int | None = None          # default: a tenth of the steps
    weight_decay: float = 0.1
    clip: float = 1.0
    eval_every: int = 100
    eval_batches: int | None = None    # default: the whole evaluation split
    seed: int = 0
    out: str | None = None             # folder for metrics.jsonl, metrics.png, checkpoint.pt
    checkpoint_every: int | None = None  # default: at every evaluation
    resume: bool = False
    nproc: int = 1
    seq_parallel: int = 1              # ranks sharing one sequence (split along N); must divide nproc
    layout: str = "auto"               # with seq_parallel > 1: auto (zigzag for causal softmax), contiguous, zigzag
    device: str = "cpu"                # cpu, or cuda (each data-parallel rank on its own GPU, NCCL)
    threads: int | None = None         # torch threads per process (default: torch's; cores / nproc with nproc > 1)
    stop_at: int | None = None         # end after this step (as if killed): for tests of --resume
    progress: bool = True
    pretrain_steps: int = 0            # the first K steps run fixed_point cells unrolled (equilibrium.set_mode)
    pretrain_applications: int | None = None  # applications of f per unrolled forward (default: the cell's iters)
    plot: bool = True                  # draw metrics.png in --out at the end


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict]
    final: dict                        # the last evaluation
    params: int
    flops_per_token: float | None
    train_flops_per_step: float | None
    wall_s: float
    baseline: dict
    no_decay: dict
    state: dict | None = None          # the final model state (one process; for tests)


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.file`` on ``config.task``; ``nproc`` > 1 starts local processes
    (``seq_parallel`` of them sharing each sequence). Called in a process that is already one
    rank of a group of ``nproc`` (``torchrun`` then ``seqdsl.distributed.init()``), it runs
    that rank's loop and returns its result (rank 0 writes the files)."""
    if config.nproc < 1:
        raise SeqError(f"--nproc {config.nproc}: give at least one process")
    par.check(config.nproc, config.seq_parallel, config.batch, config.device, config.layout)
    if config.resume and not config.out:
        raise SeqError("--resume needs --out, the folder of the checkpoint")
    if config.device != "cpu":
        if config.device != "cuda" or not torch.cuda.is_available():
            raise SeqError(f"--device {config.device}: " + ("no CUDA device is available here"
                           if config.device == "cuda" else "give cpu or cuda"))
        if config.nproc > torch.cuda.device_count():
            raise SeqError(f"--nproc {config.nproc}: only {torch.cuda.device_count()} CUDA devices")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():    # under torchrun (seqdsl.distributed.init()): one rank
        if dist.get_world_size() != config.nproc:
            raise SeqError(f"--nproc {config.nproc}: this process is one of {dist.get_world_size()} "
                           "(torchrun's group); give that number")
        return run(config, dist.get_rank(), dist.get_world_size())
    if config.nproc == 1:
        return run(config, 0, 1)
    from seqdsl.distributed import launch

    task = make_task(config.task, config.task_options)
    if config.seq_parallel > 1:                              # refused here, before any process starts
        par.shard(task.batch("train", 0, config.batch, config.seed), par.Ranks(1, 0, 1, 0, 2), task.layout.kind,
                  check_only=True)
    built = export(config.file, task.layout, task.name, entry=config.entry, sizes=config.sizes, batch=config.batch,
                   split_sequence=config.seq_parallel > 1)  # checked and generated once, here
    layout = par.resolve_layout(config.layout, built["rest"][2].graph, config.seq_parallel)
    par.check_length(task.layout.length, config.seq_parallel, layout, config.file)
    # a rank waits in a collective while the others checkpoint or log: a generous timeout
    results = launch("seqdsl.training.loop:rank_main", config.nproc, config, built,
                     threads=config.threads or max(1, (os.cpu_count() or 1) // config.nproc),
                     backend="nccl" if config.device == "cuda" else "gloo", timeout_s=1800.0,
                     preload=("torch._dynamo", "seqdsl.training.loop"))   # (AdamW imports dynamo: seconds)
    return results[0]


def rank_main(config: TrainConfig, built: dict) -> TrainResult | None:
    """One of ``config.nproc`` processes (started by ``launch``, with the model the parent
    built): its loop; rank 0's result."""
    import torch.distributed as dist

    adopt(built)
    result = run(config, dist.get_rank(), dist.get_world_size())
    return result if dist.get_rank() == 0 else None


def _aux_loss(model: torch.nn.Module, fitted: Fitted) -> torch.Tensor | None:
    """The auxiliary losses the model's layers left in this forward, already weighted by
    their options (MoE: balance α, z-loss β): ``SeqModule.aux_loss()`` (codegen/torch/moe.py).
    None for a model without such layers."""
    if not fitted.has_aux or not callable(getattr(model, "aux_loss", None)):
        return None
    return model.aux_loss()


def loss_terms(model: torch.nn.Module, batch: Batch, kind: str) -> tuple[torch.Tensor, int, int]:
    """(sum of the cross-entropy over the counted targets, correct answers, scored answers).
    A packed batch passes its document ids (docs/modules.md, "Packed rows")."""
    logits = model(batch.inputs) if batch.doc_ids is None else model(batch.inputs, doc_ids=batch.doc_ids)
    if kind == "classify":
        loss = F.cross_entropy(logits.float(), batch.targets, reduction="sum")
        correct = int((logits.argmax(-1) == batch.targets).sum())
        return loss, correct, int(batch.targets.numel())
    flat = logits.float().reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, batch.targets.reshape(-1), reduction="none").reshape(batch.targets.shape)
    loss = (ce * batch.loss_mask).sum()
    hit = (logits.argmax(-1) == batch.targets) & batch.score_mask
    return loss, int(hit.sum()), int(batch.score_mask.sum())


def _split(ranks: par.Ranks):
    """The block in which the model runs with this rank's part of the sequence (if split)."""
    if not ranks.split:
        return contextlib.nullcontext()
    import seqdsl.distributed as sd

    return sd.sequence_parallel(group=ranks.group, layout=ranks.layout)


def evaluate(model: torch.nn.Module, task: Task, config: TrainConfig, ranks: par.Ranks | None = None) -> dict:
    """Loss and accuracy over the evaluation batches. With several ranks (``ranks``) every rank
    calls it: the data-parallel groups take turns over the batches, a sequence-parallel group
    splits each one along N, and the sums are all-reduced."""
    n = task.eval_size(config.batch)
    if config.eval_batches is not None:
        n = config.eval_batches if n is None else min(n, config.eval_batches)
    if n is None:
        raise SeqError(f"task {task.name}: give --eval-batches (its evaluation split is a stream)")
    ranks = ranks or par.Ranks(1, 0, 1, 0, 1)
    kind = task.layout.kind
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)      # loss, count, correct, scored
    with torch.no_grad(), _split(ranks):
        for i in range(ranks.dp, n, ranks.dp_size):
            whole = task.batch(task.eval_split, i, config.batch, config.seed)
            loss, c, s = loss_terms(model, par.shard(whole, ranks, kind).to(device), kind)
            if par.counts_here(ranks, kind):
                sums += torch.tensor([float(loss), 0.0, c, s], dtype=torch.float64, device=device)
            if ranks.sp == 0:
                sums[1] += whole.count()
    if ranks.world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train(was)
    total, count, correct, scored = (float(v) for v in sums)
    out = {"loss": total / count, "accuracy": correct / max(1.0, scored)}
    if task.metric == "bits_per_byte":
        out["bits_per_byte"] = out["loss"] / math.log(2)
    return out


def _check_resume(state: dict, config: TrainConfig) -> None:
    old = state["config"]
    for key in RESUME_KEYS:
        if old.get(key) != asdict(config).get(key):
            raise SeqError(f"--resume: the checkpoint was written with {key} = {old.get(key)!r}, "
                           f"this run has {asdict(config).get(key)!r}")


def run(config: TrainConfig, rank: int, world: int) -> TrainResult:
    """The loop on one rank of ``world`` (world = 1: one process)."""
    import torch.distributed as dist

    from codegen.torch.equilibrium import set_mode

    start_time = time.perf_counter()
    if config.threads and world == 1:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    task = make_task(config.task, config.task_options)
    split = config.seq_parallel > 1
    fitted = fit(config.file, task.layout, task.name, entry=config.entry, sizes=config.sizes, seed=config.seed,
                 batch=config.batch, split_sequence=split)
    layout = par.resolve_layout(config.layout, fitted.checked.graph, config.seq_parallel)
    par.check_length(task.layout.length, config.seq_parallel, layout, config.file)
    ranks = par.make_ranks(rank, world, config.seq_parallel, layout)
    kind = task.layout.kind
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if config.device == "cuda" else "cpu")
    model = fitted.model.to(device)
    model.train()
    if world > 1:           # dropout: each rank its own stream (one seed everywhere repeats one mask pattern)
        torch.manual_seed(config.seed + 7919 * rank)
    warmup = config.warmup if config.warmup is not None else config.steps // 10
    opt = make_optimizer(model, fitted.no_decay, config.lr, config.weight_decay)
    sched = make_scheduler(opt, config.steps, warmup)
    out = Path(config.out) if config.out else None
    lead = rank == 0
    history: list[dict] = []
    start = 0
    if config.resume:
        state = checkpoint.load(out)
        _check_resume(state, config)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        start, history = state["step"], list(state["history"])
    if out is not None and lead:
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(history, out / "metrics.jsonl")
    every_ckpt = config.checkpoint_every or config.eval_every
    tokens_per_step = config.batch * task.layout.length
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _progress(config, start) if lead else None
    last = time.perf_counter()
    try:
        for step in range(start, config.steps):
            if config.stop_at is not None and step >= config.stop_at:
                break
            if config.pretrain_steps:       # the released DEQ's pretraining: unrolled, then the solver
                set_mode(model, *(("unrolled", config.pretrain_applications) if step < config.pretrain_steps
                                  else ("solve", None)))
            whole = task.batch("train", step, config.batch, config.seed)
            mine = whole.rows(*ranks.rows(config.batch)) if ranks.dp_size > 1 else whole
            local = par.shard(mine, ranks, kind).to(device)
            with _split(ranks):
                loss_sum, correct, scored = loss_terms(model, local, kind)
                loss = loss_sum / whole.count()           # the global count: the world's sum is one loss
                aux = _aux_loss(model, fitted)
                if aux is not None:
                    loss = loss + aux / world
                loss.backward()
            here = par.counts_here(ranks, kind)           # a replicated output: reported once per group
            stats = torch.tensor([float(loss_sum.detach()) if here else 0.0, correct if here else 0,
                                  scored if here else 0], dtype=torch.float64, device=device)
            if world > 1:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                dist.all_reduce(stats)
                offset = 0
                for p, g in zip(params, grads):
                    p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
                    offset += g.numel()
            gnorm = torch.nn.utils.clip_grad_norm_(params, config.clip) if config.clip > 0 else None
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            now = time.perf_counter()
            rec = {"split": "train", "step": step + 1, "loss": float(stats[0]) / whole.count(),
                   "accuracy": float(stats[1]) / max(1.0, float(stats[2])), "lr": lr,
                   "tokens": (step + 1) * tokens_per_step, "tokens_per_s": tokens_per_step / max(1e-9, now - last),
                   "flops": None if fitted.train_flops_per_step is None else (step + 1) * fitted.train_flops_per_step}
            if gnorm is not None:
                rec["grad_norm"] = float(gnorm)
            last = now
            if aux is not None:
                rec["aux_loss"] = float(aux.detach())
            history.append(rec)
            done = step + 1 == config.steps
            if (step + 1) % config.eval_every == 0 or done:          # every rank: a collective
                ev = {**evaluate(model, task, config, ranks), "split": task.eval_split, "step": step + 1,
                      "flops": rec["flops"], "tokens": rec["tokens"]}
                history.append(ev)
                _say(bar, f"step {step + 1}/{config.steps}: train loss {rec['loss']:.4f}, {task.eval_split} "
                     + ", ".join(f"{k} {ev[k]:.4f}" for k in ("loss", "accuracy", "bits_per_byte") if k in ev))
            if out is not None and lead:
                for r in history[-2:] if history[-1]["split"] != "train" else history[-1:]:
                    append_jsonl(_clean(r), out / "metrics.jsonl")
            if out is not None and ((step + 1) % every_ckpt == 0 or done or step + 1 == config.stop_at):
                rngs = _gather_rng(world)           # a collective: every rank, the same steps
                if lead:
                    checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "rng": rngs, "step": step + 1,
                                     "history": history, "config": asdict(config)}, out)
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=f"loss {rec['loss']:.3f} acc {rec['accuracy']:.3f} "
                              f"{rec['tokens_per_s']:,.0f} tok/s")
    finally:
        if bar is not None:
            bar[0].stop()
    evals = [r for r in history if r["split"] != "train"]
    result = TrainResult(config, history, evals[-1] if evals else {}, fitted.params, fitted.flops_per_token,
                         fitted.train_flops_per_step, time.perf_counter() - start_time,
                         task.baseline() if lead and evals else {}, fitted.no_decay,
                         state={k: v.detach().clone() for k, v in model.state_dict().items()})
    if out is not None and lead and evals and config.plot:
        plot_runs({Path(config.file).stem: history}, out / "metrics.png", f"{Path(config.file).name} on {task.name}",
                  metric=task.metric if task.metric in evals[-1] else "accuracy")
    return result


def _gather_rng(world: int) -> list:
    """Every rank's RNG state (dropout differs per rank), gathered on all ranks."""
    mine = checkpoint.rng_state()
    if world == 1:
        return [mine]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, mine)
    return out


def _clean(rec: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}


def _progress(config: TrainConfig, start: int):
    if not config.progress:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                 TimeRemainingColumn(), transient=False)
    tid = p.add_task("", total=config.steps, completed=start)
    p.start()
    return p, tid


def _say(bar, text: str) -> None:
    if bar is not None:      # quiet without a progress bar (the API's progress=False)
        bar[0].console.print(text)
