"""Small models trained on the tasks of docs/training.md, on a CPU, in minutes per run.

The experiments of H3's Table 1 (attention and H3 solve associative recall, S4D does worse
on induction heads), LRA ListOps against its majority class, and byte-level language
modelling against a unigram model. Each experiment is one ``seqdsl compare`` command (the
commands are listed below and in the results); ``report`` gathers their folders into
benchmarks/results/train.md and train.png.

    python benchmarks/train.py run [NAME ...]    # run the experiments (default: all), one after the other
    python benchmarks/train.py report            # write benchmarks/results/train.md and train.png
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "results" / "train_runs"
COMMON = "--threads 1 --no-progress --batch 32"

# name -> (files, task and options, sizes, budget); a --set applies to every file that declares the dim.
EXPERIMENTS = {
    "associative_recall": (
        "examples/models/transformer_decoder.seq examples/models/h3.seq examples/models/s4d_lm.seq",
        "--task associative_recall --task-opt vocab=10 --task-opt seq_len=16 --task-opt loss=answer",
        "--set D=128 --set L=2 --set V=10 --set H=4 --set F=256 --set S=16",
        "--steps 1500 --lr 1e-3 --eval-every 250 --eval-batches 8"),
    "associative_recall_lr3e-3": (
        "examples/models/transformer_decoder.seq examples/models/h3.seq examples/models/s4d_lm.seq",
        "--task associative_recall --task-opt vocab=10 --task-opt seq_len=16 --task-opt loss=answer",
        "--set D=64 --set L=2 --set V=10 --set H=4 --set F=128 --set S=16",
        "--steps 1500 --lr 3e-3 --eval-every 250 --eval-batches 8"),
    "induction_heads": (
        "examples/models/transformer_decoder.seq examples/models/h3.seq examples/models/s4d_lm.seq",
        "--task induction_heads --task-opt vocab=10 --task-opt seq_len=16 --task-opt loss=answer",
        "--set D=64 --set L=2 --set V=10 --set H=4 --set F=128 --set S=16",
        "--steps 1500 --lr 3e-3 --eval-every 250 --eval-batches 8"),
    "induction_heads_64": (
        "examples/models/transformer_decoder.seq examples/models/s4d_lm.seq",
        "--task induction_heads --task-opt vocab=10 --task-opt seq_len=64 --task-opt loss=answer",
        "--set D=64 --set L=2 --set V=10 --set H=4 --set F=128 --set S=16",
        "--steps 500 --lr 3e-3 --eval-every 125 --eval-batches 8"),
    "induction_heads_40": (
        "examples/models/transformer_decoder.seq examples/models/s4d_lm.seq",
        "--task induction_heads --task-opt vocab=20 --task-opt seq_len=40 --task-opt loss=answer",
        "--set D=64 --set L=2 --set V=20 --set H=4 --set F=128 --set S=16",
        "--steps 2000 --lr 1e-3 --eval-every 250 --eval-batches 8"),
    "listops": (
        "examples/models/transformer_encoder.seq",
        "--task listops --task-opt min_length=20 --task-opt max_length=100 --task-opt valid_examples=512",
        "--set D=64 --set L=2 --set V=16 --set Classes=10 --set H=4 --set F=128",
        "--steps 400 --batch 16 --lr 2e-3 --eval-every 100"),
    "text_lm": (
        "examples/models/h3.seq",
        "--task text_lm --task-opt length=128 --task-opt eval_windows=256",
        "--set D=64 --set L=2 --set S=16 --set V=256",
        "--steps 500 --batch 16 --lr 2e-3 --eval-every 100"),
}


def command(name: str) -> str:
    files, task, sizes, budget = EXPERIMENTS[name]
    common = COMMON.replace("--batch 32", "") if "--batch" in budget else COMMON
    return f"seqdsl compare {files} {task} {sizes} {budget} {common} --out benchmarks/results/train_runs/{name}"


def run(names: list[str]) -> None:
    for name in names or list(EXPERIMENTS):
        cmd = command(name)
        print(f"$ {cmd}", flush=True)
        subprocess.run(shlex.split(cmd), cwd=ROOT, check=True)


def _history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [n for n in EXPERIMENTS if (RUNS / n / "compare.md").is_file()]
    cols = (len(done) + 1) // 2
    fig, grid = plt.subplots(2, cols, figsize=(4.2 * cols, 7.2), squeeze=False)
    axes = [[ax for row in grid for ax in row]]
    lines = ["# Training small models on the tasks (seqdsl train / compare)", "",
             f"Machine: {platform.machine()} CPU, {platform.python_implementation()} "
             f"{platform.python_version()} (its standard library is the text corpus); a 2-core VM shared with "
             "other jobs (load average 10-15 while these ran), so wall times are pessimistic and only comparable "
             "within a table. One process per run, `--threads 1`. Regenerate: `python benchmarks/train.py run` "
             "then `python benchmarks/train.py report`.", ""]
    for ax, name in zip(axes[0], done):
        lines += [f"## {name}", "", "```", command(name), "```", "",
                  (RUNS / name / "compare.md").read_text().strip(), ""]
        metric = "bits_per_byte" if name == "text_lm" else "accuracy"
        for i, sub in enumerate(sorted(p for p in (RUNS / name).iterdir() if p.is_dir())):
            ev = [r for r in _history(sub) if r["split"] != "train"]
            ax.plot([r["step"] for r in ev], [r[metric] for r in ev], marker=".", color=f"C{i}", label=sub.name)
        extra = baseline(name)
        if extra:
            ax.axhline(extra[0], color="grey", ls="--", lw=1, label=extra[1])
            lines += [f"Baseline: {extra[1]}.", ""]
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(f"eval {metric.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "results" / "train.png", dpi=110)
    out = ROOT / "benchmarks" / "results" / "train.md"
    out.write_text("\n".join(lines + NOTES) + "\n")
    print(f"wrote {out} and train.png")


def baseline(name: str) -> tuple[float, str] | None:
    """The number a model must beat, from the task itself (``Task.baseline``)."""
    from seqdsl.training.tasks import make_task

    words = shlex.split(EXPERIMENTS[name][1])
    task = words[words.index("--task") + 1]
    opts = dict(w.split("=", 1) for i, w in enumerate(words) if i and words[i - 1] == "--task-opt")
    base = make_task(task, opts).baseline()
    if "majority_accuracy" in base:
        return base["majority_accuracy"], f"majority class ({base['majority_accuracy']:.3f})"
    if "unigram_bits_per_byte" in base:
        return base["unigram_bits_per_byte"], f"unigram ({base['unigram_bits_per_byte']:.3f} bits/byte)"
    return None


NOTES = """
## What these runs show, and what they do not

- **Associative recall** (`associative_recall`, lr 1e-3, width 128): attention and H3 both
  solve it (≥ 90% of the 256 evaluation answers), S4D does not — the H3 paper's Table 1
  ordering for this task. The same three models at lr 3e-3 and width 64
  (`associative_recall_lr3e-3`): attention 100%, but H3 stays at 48% (a model that answers
  with a value seen in the context, not the right one) and S4D at 66%: H3 is sensitive to
  the learning rate (safari trains its SSM parameters at lr 1e-3); with lr 1e-3 at width 64
  and the loss on every position, H3 reached 93% after 2250 steps (a run outside this table).
  With safari's loss on every position, attention reached 99.2% after 2000 steps at lr 3e-3
  (`associative_recall_loss_all`, H3 stopped at step 1000 at 49%).
- **Induction heads** at `seq_len=16`: all three models reach 100%, S4D included: at this
  length a 2-layer S4D with MLPs can shift by one, gate with its MLP and sum, so the Table 1
  gap (S4D 35.6% in the paper) does **not** show here. At `seq_len=64`
  (`induction_heads_64`) neither attention nor S4D learned it in 500 steps (14% and 13%,
  chance 12.5%): this budget is too small to tell them apart there.
- **Induction heads at the paper's sizes** (`induction_heads_40`: vocabulary 20, 40 tokens,
  2000 steps at lr 1e-3, width 64): attention 100%, S4D 10.9% (chance 5%) — S4D clearly
  worse, the Table 1 ordering (paper: attention 100%, S4D 35.6%).
- Sizes of the other synthetic runs are smaller than the paper's (vocabulary 10 and 16
  tokens of key-value pairs or noise instead of vocabulary 20 and 40) and the loss counts the answer only (`loss=answer`;
  safari trains on every position, which learned more slowly here), so that a run fits in
  minutes on a loaded 2-core CPU. The generators are the paper's (docs/training.md).
- **ListOps**: generated by LRA's rules with lengths 20-100 instead of 500-2000 (the same
  generator, `--task-opt min_length/max_length`), one small Transformer encoder: 31.2%
  against the majority class's 11.1%.
- **Byte-level LM**: 2.53 bits per byte on held-out standard-library files after 500 steps,
  against 4.63 for the unigram model of the training files (8 for uniform bytes).
- The `associative_recall` table's three rows come from three `seqdsl train` runs with the
  settings of the command above, run side by side (wall times overlap); the compare command
  repeats them bit for bit (same seeds, same batches).
""".splitlines()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "report"):
        sys.exit(__doc__)
    run(sys.argv[2:]) if sys.argv[1] == "run" else report()
