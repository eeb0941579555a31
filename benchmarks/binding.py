"""What it costs a module to bind its sizes at each call (codegen/torch/sizes.py).

A module loaded without N reads B and N from its inputs at every call, checks the other
sizes, picks each mixer's algorithm for that length and builds (or finds in a cache) the
masks' block schedules. This benchmark measures, side by side in one process, for a causal
Transformer decoder and a sliding-window model at N = 4096:

- one forward at N = 4096 (the reference);
- the cached path: what a call spends on its sizes when the size was seen before
  (``rt.bind_sizes`` and every ``rt.by_length`` of the module, timed alone);
- re-planning: the first forward at a new size minus a later forward at that size.

The target: the cached path under 2% of the forward. Writes benchmarks/results/binding.md
and binding.png.

    python benchmarks/binding.py
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import torch

import seqdsl
from codegen.torch import runtime as rt

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
CASES = [
    ("transformer_decoder (D256 H4 L2)", "examples/models/transformer_decoder.seq",
     dict(D=256, H=4, L=2, F=1024, V=256)),
    ("sliding-window mixer (H4 Dh64, W256)", "examples/mixers/sliding_window.seq", dict()),
]


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def binding_only(model, inputs) -> float:
    """Seconds of the size work of one call: bind_sizes and the length-dependent choices."""
    calls = re.findall(r"rt\.by_length\((\w+), (\(\(.*?\)\))\)", model.source)
    n = int(inputs[0].shape[-2] if inputs[0].dim() > 2 else inputs[0].shape[-1])
    tables = [eval_table(t) for _, t in calls]

    def run():
        for _ in range(100):
            rt.bind_sizes(model, *inputs)
            for table in tables:
                rt.by_length(n, table)
    return best(run) / 100


def eval_table(text: str) -> tuple:
    """The literal table of a by_length call (numbers, None and algorithm names only)."""
    import ast
    return ast.literal_eval(text)


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for label, path, sizes in CASES:
        model = seqdsl.load(ROOT / path, **sizes).eval()
        inputs = model.example_inputs(B=1, N=4096)
        with torch.no_grad():
            model(*inputs)
            forward = best(lambda m=model, x=inputs: m(*x), 3)
            cached = binding_only(model, inputs)
            other = model.example_inputs(B=1, N=3000)
            start = time.perf_counter()
            model(*other)
            first = time.perf_counter() - start
            later = best(lambda m=model, x=other: m(*x), 3)
        rows.append((label, forward, cached, first - later, later))
        print(f"{label}: forward {forward * 1e3:.1f} ms, cached binding {cached * 1e6:.1f} µs "
              f"({cached / forward:.2%}), re-planning a new size {(first - later) * 1e3:.1f} ms", flush=True)
    write(rows)


def write(rows) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    lines = ["# Binding sizes at call time", "",
             f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32. "
             "Forward at B=1, N=4096 (best of 3); the cached path is `rt.bind_sizes` plus every "
             "`rt.by_length` of the module (best of 5 × 100 calls); re-planning is the first forward "
             "at N=3000 minus a later one. Target: cached path < 2% of the forward.", "",
             "| model | forward N=4096 | cached binding | share | re-planning a new size | target met |",
             "|---|---:|---:|---:|---:|---|"]
    for label, forward, cached, replan, _later in rows:
        lines.append(f"| {label} | {forward * 1e3:.1f} ms | {cached * 1e6:.1f} µs | {cached / forward:.3%} | "
                     f"{replan * 1e3:.1f} ms | {'yes' if cached / forward < 0.02 else 'no'} |")
    (OUT / "binding.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3))
    names = [r[0] for r in rows]
    ax.barh([n + " forward" for n in names], [r[1] * 1e3 for r in rows], label="forward N=4096")
    ax.barh([n + " cached" for n in names], [r[2] * 1e3 for r in rows], label="cached binding")
    ax.barh([n + " new size" for n in names], [max(r[3], 0) * 1e3 for r in rows], label="re-planning")
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "binding.png", dpi=120)
    print(f"wrote {OUT / 'binding.md'} and binding.png")


if __name__ == "__main__":
    main()
