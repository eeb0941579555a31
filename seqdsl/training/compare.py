"""``seqdsl compare A.seq B.seq ... --task T``: the same task, budget and seed for each
file, one table (accuracy, parameters, FLOPs per token, wall time) and one plot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from seqdsl.errors import SeqError
from seqdsl.training.loop import TrainConfig, TrainResult, train
from seqdsl.training.metrics import plot_runs


def sizes_for(file: str, sizes: dict) -> dict:
    """The ``--set`` values that ``file`` declares (a compare sets D for every file that has D)."""
    from seqdsl.api import parse

    declared = set(parse(file).dims)
    return {k: v for k, v in sizes.items() if k in declared}


def compare(files: list[str], base: TrainConfig) -> list[TrainResult]:
    """Train every file with ``base``'s task and budget; each in ``base.out/<stem>``."""
    if not files:
        raise SeqError("compare: give at least one .seq file")
    unused = set(base.sizes)
    for f in files:
        unused -= set(sizes_for(f, base.sizes))
    if unused:
        raise SeqError(f"compare: --set {', '.join(sorted(unused))}: no file declares it")
    stems = [Path(f).stem for f in files]
    if len(set(stems)) != len(stems):
        raise SeqError("compare: two files have the same name; their results would share a folder")
    results = []
    for f in files:
        out = str(Path(base.out) / Path(f).stem) if base.out else None
        results.append(train(replace(base, file=f, sizes=sizes_for(f, base.sizes), out=out)))
    return results


def table(results: list[TrainResult]) -> str:
    """A markdown table, one row per file."""
    metric = "bits_per_byte" if any("bits_per_byte" in r.final for r in results) else None
    head = ["model", "eval accuracy", "eval loss"] + ([metric.replace("_", " ")] if metric else []) + [
        "parameters", "FLOPs/token (fwd)", "wall s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [Path(r.config.file).name, f"{r.final.get('accuracy', float('nan')):.3f}",
                 f"{r.final.get('loss', float('nan')):.4f}"]
        if metric:
            cells.append(f"{r.final.get(metric, float('nan')):.3f}")
        cells += [f"{r.params:,}", "n/a" if r.flops_per_token is None else f"{r.flops_per_token:,.0f}",
                  f"{r.wall_s:.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(results: list[TrainResult], path: Path, title: str) -> None:
    runs = {Path(r.config.file).stem: r.history for r in results}
    metric = "bits_per_byte" if any("bits_per_byte" in r.final for r in results) else "accuracy"
    plot_runs(runs, path, title, metric=metric)
