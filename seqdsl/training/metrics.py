"""Metrics as JSON lines, and the plot: loss and accuracy against step and against FLOPs."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(records: list[dict], path: Path) -> None:
    """Rewrite ``path`` with ``records`` (atomically: a resumed run rewrites it from its checkpoint)."""
    import os

    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)


def append_jsonl(record: dict, path: Path) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_runs(runs: dict[str, list[dict]], path: Path, title: str = "", metric: str = "accuracy") -> None:
    """One figure of 2×2 panels: evaluation loss and ``metric`` against step and against
    training FLOPs (from seqdsl.analyze), one line per run; train loss dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for i, (label, history) in enumerate(runs.items()):
        color = f"C{i}"
        train = [r for r in history if r["split"] == "train"]
        ev = [r for r in history if r["split"] != "train"]
        for col, x in enumerate(("step", "flops")):
            if any(r.get(x) is None for r in train + ev):
                continue
            ax = axes[0][col]
            ax.plot([r[x] for r in train], [r["loss"] for r in train], color=color, alpha=0.35, lw=0.8, ls=":")
            ax.plot([r[x] for r in ev], [r["loss"] for r in ev], color=color, marker=".", label=label)
            ax = axes[1][col]
            ax.plot([r[x] for r in ev], [r.get(metric) for r in ev], color=color, marker=".", label=label)
    for col, x in enumerate(("step", "training FLOPs")):
        axes[0][col].set_ylabel("loss (nats; train dotted)")
        axes[1][col].set_ylabel(f"eval {metric}")
        for row in (0, 1):
            axes[row][col].set_xlabel(x)
            axes[row][col].grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
