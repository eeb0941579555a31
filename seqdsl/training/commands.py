"""The ``seqdsl train`` and ``seqdsl compare`` commands (registered by seqdsl/cli.py).

Kept out of cli.py so the command line stays thin; nothing here imports torch until a
command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

TaskOpt = Annotated[str, typer.Option("--task", "-t", help="The task (seqdsl train --list-tasks).")]
TaskSetOpt = Annotated[Optional[list[str]], typer.Option("--task-opt", help="A task option: --task-opt seq_len=64.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Set a dim or option: --set D=64.")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Optimizer steps.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Global batch size (split over --nproc).")]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")]
WarmupOpt = Annotated[Optional[int], typer.Option("--warmup", help="Warmup steps (default: steps / 10).")]
WdOpt = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay (not on norms, biases, Δ/A).")]
ClipOpt = Annotated[float, typer.Option("--clip", help="Gradient norm clipping (0: off).")]
EvalOpt = Annotated[int, typer.Option("--eval-every", help="Evaluate every K steps.")]
EvalBatchesOpt = Annotated[Optional[int], typer.Option("--eval-batches", help="Evaluation batches (default: all).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the weights, data order and dropout.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch threads per process.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")]


def _config(file, task, task_opt, set_, entry, steps, batch, lr, warmup, weight_decay, clip, eval_every,
            eval_batches, seed, out, threads, progress, parse_sets, **extra):
    from seqdsl.training import TrainConfig

    return TrainConfig(str(file), task, task_options=parse_sets(task_opt), entry=entry, sizes=parse_sets(set_),
                       steps=steps, batch=batch, lr=lr, warmup=warmup, weight_decay=weight_decay, clip=clip,
                       eval_every=eval_every, eval_batches=eval_batches, seed=seed,
                       out=None if out is None else str(out), threads=threads, progress=progress, **extra)


def _tasks_text() -> str:
    from seqdsl.training.tasks import TASKS, task_options

    lines = []
    for name, cls in sorted(TASKS.items()):
        opts = " ".join(f"{k}={v}" for k, v in task_options(cls).items())
        lines.append(f"{name}: {cls.source}\n    options: {opts}")
    return "\n".join(lines)


def register(app: typer.Typer, guarded: Callable, parse_sets: Callable, output_path: Callable) -> None:
    """Add ``train`` and ``compare`` to ``app``."""

    def train_cmd(
        file: Annotated[Optional[Path], typer.Argument(help="A .seq file.", show_default=False)] = None,
        task: Annotated[Optional[str], typer.Option("--task", "-t", help="The task (--list-tasks).")] = None,
        task_opt: TaskSetOpt = None, set_: SetOpt = None,
        entry: Annotated[Optional[str], typer.Option("--entry", "-e", help="The model to train.")] = None,
        steps: StepsOpt = 1000, batch: BatchOpt = 32, lr: LrOpt = 1e-3, warmup: WarmupOpt = None,
        weight_decay: WdOpt = 0.1, clip: ClipOpt = 1.0, eval_every: EvalOpt = 100, eval_batches: EvalBatchesOpt = None,
        seed: SeedOpt = 0,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder: metrics.jsonl, metrics.png, "
                                                    "checkpoint.pt.")] = None,
        checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", help="Default: --eval-every.")]
        = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")] = False,
        nproc: Annotated[int, typer.Option("--nproc", help="Local processes (gloo; NCCL with --device cuda, one GPU "
                                           "each): data parallel, in groups of --seq-parallel.")] = 1,
        seq_parallel: Annotated[int, typer.Option("--seq-parallel", help="Processes sharing each sequence, split along "
                                                  "N (must divide --nproc; the groups split the batch).")] = 1,
        layout: Annotated[str, typer.Option("--layout", help="With --seq-parallel: auto (zigzag for causal softmax, "
                                            "else contiguous), contiguous or zigzag.")] = "auto",
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        threads: ThreadsOpt = None, progress: ProgressOpt = True,
        pretrain_steps: Annotated[int, typer.Option("--pretrain-steps", help="Run fixed_point cells unrolled "
                                                    "(no solver, plain backprop) for the first K steps.")] = 0,
        pretrain_applications: Annotated[Optional[int], typer.Option("--pretrain-applications", help="Applications "
                                                                     "of f per unrolled forward (default: iters).")]
        = None,
        list_tasks: Annotated[bool, typer.Option("--list-tasks", help="List the tasks and their options.")] = False,
    ) -> None:
        """Train FILE's model on a task: AdamW, warmup + cosine, evaluation, metrics and checkpoints."""
        from seqdsl.errors import SeqError

        if list_tasks:
            typer.echo(_tasks_text())
            return
        if file is None or task is None:
            raise SeqError("train: give a .seq file and --task (seqdsl train --list-tasks lists the tasks)")
        if out is not None:
            output_path(out, "train --out", folder=True)
        from seqdsl.training import train

        config = _config(file, task, task_opt, set_, entry, steps, batch, lr, warmup, weight_decay, clip, eval_every,
                         eval_batches, seed, out, threads, progress, parse_sets, checkpoint_every=checkpoint_every,
                         resume=resume, nproc=nproc, seq_parallel=seq_parallel, layout=layout, device=device,
                         pretrain_steps=pretrain_steps, pretrain_applications=pretrain_applications)
        result = train(config)
        typer.echo(summary(result))

    def compare_cmd(
        files: Annotated[list[Path], typer.Argument(help="The .seq files.", show_default=False)],
        task: TaskOpt, task_opt: TaskSetOpt = None, set_: SetOpt = None,
        steps: StepsOpt = 1000, batch: BatchOpt = 32, lr: LrOpt = 1e-3, warmup: WarmupOpt = None,
        weight_decay: WdOpt = 0.1, clip: ClipOpt = 1.0, eval_every: EvalOpt = 100, eval_batches: EvalBatchesOpt = None,
        seed: SeedOpt = 0,
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder: one subfolder per file, compare.md/png.")]
        = Path("compare"),
        threads: ThreadsOpt = None, progress: ProgressOpt = True,
    ) -> None:
        """Train each file on the task with the same budget; print the table and draw one plot.
        A --set applies to every file that declares the dim."""
        from seqdsl.training.compare import compare, plot, table

        output_path(out, "compare --out", folder=True)
        base = _config(files[0], task, task_opt, set_, None, steps, batch, lr, warmup, weight_decay, clip,
                       eval_every, eval_batches, seed, out, threads, progress, parse_sets)
        results = compare([str(f) for f in files], base)
        text = table(results)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text + "\n")
        plot(results, out / "compare.png", f"{task}: {steps} steps of batch {batch}")
        typer.echo(text)
        typer.echo(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")

    app.command(name="train")(guarded(train_cmd))
    app.command(name="compare")(guarded(compare_cmd))


def summary(result) -> str:
    """What a finished run prints."""
    f = result.final
    lines = [f"{Path(result.config.file).name} on {result.config.task}: {result.params:,} parameters, "
             + ("FLOPs/token n/a" if result.flops_per_token is None else
                f"{result.flops_per_token:,.0f} FLOPs/token (forward)") + f", {result.wall_s:.1f} s"]
    if f:
        lines.append("  final evaluation: " + ", ".join(f"{k} {f[k]:.4f}" for k in ("loss", "accuracy",
                                                                                     "bits_per_byte") if k in f))
    for k, v in result.baseline.items():
        lines.append(f"  baseline {k}: {v:.4f}" if isinstance(v, float) else f"  baseline {k}: {v}")
    if result.config.out:
        lines.append(f"  wrote {result.config.out}/metrics.jsonl, metrics.png, checkpoint.pt")
    return "\n".join(lines)
