"""Step decoding against recomputing the whole forward, per generated token (issue 13).

For Mamba-, RetNet-, H3- and Transformer-style language models built from the example
files at the same width (``--set`` shrinks width and depth equally; the sizes are in
CASES), at contexts of 512, 4096 and 16384 tokens, side by side in one process:

- **recompute**: the next token's logits by one full forward over the context (what a
  model without a state must do for every token): tokens/s = 1 / the forward's time;
- **step**: ``model.prefill`` over the context once, then ``model.step`` one token at a
  time from the state: tokens/s of the steps (median of STEPS steps after a warm-up);
- the state's memory per sequence (``state.nbytes``) next to what ``analyze complexity
  --decode`` predicts.

Writes benchmarks/results/decode.md and decode.png.

    python benchmarks/decode.py [--contexts 512 4096 16384] [--steps 16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import seqdsl

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
WIDTH = dict(D=64, L=2, V=256)
CASES = [
    ("Mamba (E=2D, S=16, conv 4)", "examples/models/mamba.seq", dict(WIDTH)),
    ("RetNet (H=4, Dv=2D, F=2D)", "examples/models/retnet.seq", dict(WIDTH, H=4, F=128)),
    ("H3 (shift S=64, diag S=64, MLP 4D)", "examples/models/h3.seq", dict(WIDTH)),
    ("Transformer (H=4, F=2D)", "examples/models/transformer_decoder.seq", dict(WIDTH, H=4, F=128)),
]


def measure(path: str, sizes: dict, contexts: list[int], steps: int) -> list[dict]:
    torch.manual_seed(0)
    model = seqdsl.load(ROOT / path, **sizes).eval()
    ok, why = model.can_decode
    if not ok:
        raise SystemExit(f"{path}: cannot decode: {why}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in contexts:
        report = seqdsl.analyze(ROOT / path, decode=True, **sizes, N=n + steps + 2).to_dict()["decode"]
        tokens = torch.randint(0, sizes["V"], (1, n), generator=gen)
        with torch.no_grad():
            model(tokens[:, :64])                              # warm the algorithm choice and caches
            recompute = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                model(tokens)
                recompute = min(recompute, time.perf_counter() - start)
            start = time.perf_counter()
            _, state = model.prefill(tokens)
            prefill = time.perf_counter() - start
            token = tokens[:, -1]
            times = []
            for i in range(steps + 2):
                start = time.perf_counter()
                logits, state = model.step(token, state)
                if i >= 2:                                     # two warm-up steps
                    times.append(time.perf_counter() - start)
                token = logits.argmax(-1)
        step, median = min(times), statistics.median(times)
        rows.append(dict(n=n, recompute=recompute, prefill=prefill, step=step, median=median, state=state.nbytes,
                         predicted=report["total"]["values"]["state_bytes"],
                         predicted_at=n + steps + 2))
        print(f"  N={n}: recompute {recompute * 1e3:.1f} ms, step {step * 1e3:.2f} ms (median {median * 1e3:.2f}) "
              f"({recompute / step:.0f}x), state {state.nbytes / 1024:.1f} KiB", flush=True)
    return rows


def fmt_bytes(b: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def write(results: dict, contexts: list[int], steps: int, seconds: float) -> None:
    OUT.mkdir(exist_ok=True)
    lines = [
        "# Step decoding vs recomputing the forward",
        "",
        f"Machine: {platform.machine()}, a shared 2-core VM under load (6 engineers), torch threads: "
        f"{torch.get_num_threads()} for both sides, "
        f"torch {torch.__version__}, fp32, batch 1. Models from the example files at "
        f"D = {WIDTH['D']}, L = {WIDTH['L']}, V = {WIDTH['V']} (sizes in each row). Recompute: one full forward "
        "over the context (best of 2) per generated token; step: `model.step` after `model.prefill` over the "
        f"context (best of {steps} steps after 2 warm-up steps; the median in brackets). State: `state.nbytes` per sequence after the "
        "steps, and what `seqdsl analyze complexity --decode` predicts at that length. "
        f"Run time {seconds:.0f} s (`python benchmarks/decode.py`).",
        "",
        "| model | context | recompute tok/s | step tok/s | step / recompute | step ms/token (median) | prefill s "
        "| state / sequence | predicted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['n']} | {1 / r['recompute']:.3g} | {1 / r['step']:.4g} | "
                         f"{r['recompute'] / r['step']:.0f}x | {r['step'] * 1e3:.2f} ({r['median'] * 1e3:.2f}) | {r['prefill']:.2f} | "
                         f"{fmt_bytes(r['state'])} | {fmt_bytes(r['predicted'])} |")
    lines += ["", "Per-token step time from the shortest to the longest context (flat for a fixed-size state, "
              "linear in the context for a KV cache):", ""]
    for name, rows in results.items():
        lines.append(f"- {name}: {rows[0]['step'] * 1e3:.2f} ms -> {rows[-1]['step'] * 1e3:.2f} ms "
                     f"(x{rows[-1]['step'] / rows[0]['step']:.2f} for x{rows[-1]['n'] // rows[0]['n']} context)")
    if 4096 in contexts:
        lines += ["", "Step over recompute at a context of 4096 (the issue expects ≥ 50× for the SSM / linear "
                  "models):", ""]
        for name, rows in results.items():
            r = next(r for r in rows if r["n"] == 4096)
            ratio = r["recompute"] / r["step"]
            lines.append(f"- {name}: {ratio:.0f}x ({'at least' if ratio >= 50 else 'below'} 50x)")
    (OUT / "decode.md").write_text("\n".join(lines) + "\n")
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, rows) in enumerate(results.items()):
        color = f"C{i}"
        ns = [r["n"] for r in rows]
        a.plot(ns, [r["step"] * 1e3 for r in rows], "o-", color=color, label=f"{name}: step")
        a.plot(ns, [r["recompute"] * 1e3 for r in rows], "s--", color=color, alpha=0.6, label=f"{name}: recompute")
        b.plot(ns, [r["state"] / 1024 for r in rows], "o-", color=color, label=name)
    a.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="ms per generated token",
          title="per-token time: step vs recompute")
    b.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="KiB per sequence", title="decoding state")
    a.legend(fontsize=6)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "decode.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (1: on a loaded VM, a thread pool's wake-up "
                             "latency dominates the small ops of a step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {}
    for name, path, sizes in CASES:
        print(name, flush=True)
        results[name] = measure(path, sizes, args.contexts, args.steps)
    write(results, args.contexts, args.steps, time.perf_counter() - start)
    print(f"wrote {OUT / 'decode.md'} and decode.png")


if __name__ == "__main__":
    main()
