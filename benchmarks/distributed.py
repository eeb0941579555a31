"""Sequence-parallel multi-head attention against vanilla multi-head attention
(docs/distributed.md; the baseline of the seed paper's "40×" claim, Hè & Kabic 2023).

    python benchmarks/distributed.py [--quick]

Causal multi-head attention, B = 1, H = 8, Dh = 64, fp32, forward (no_grad):

- **vanilla**: the scores [H, N, N] materialised (``algorithm='materialized'``), one process;
- **seqdsl**: ``examples/mixers/softmax_attention.seq`` loaded as a module and run inside
  ``seqdsl.distributed.sequence_parallel`` on P = 1, 2, 4 local gloo processes (P = 1: the
  one-process module, tiled); 8 heads over 2 or 4 ranks: Ulysses (the cost rule's choice).

Measured at each N: the best of 3 times (slowest rank), and each rank's peak resident memory
above what it held before the call (inputs excluded). The analysis (``analyze complexity
--nproc P``) gives the per-rank memory formula; the table sets the measurement beside it,
and the largest N that fits a per-rank budget is read from that formula for both. Writes
benchmarks/results/distributed.md and .png.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "examples/mixers/softmax_attention.seq"
SIZES = dict(B=1, H=8, Dh=64)
BUDGET = 2**30            # per-rank memory budget for the "largest N" columns: 1 GiB


def _call(model, vanilla: bool, q, k, v):
    import torch

    import seqdsl.distributed as sd
    from codegen import masks as M
    from codegen.softmax.torch_impl import softmax_attention

    if vanilla:
        return softmax_attention(q, k, v, M.Causal(0), scale=0.125, algorithm="materialized")
    if torch.distributed.get_world_size() == 1:
        return model(q, k, v)
    with sd.sequence_parallel():
        return model(q, k, v)


def worker(ns: list[int], vanilla: bool, repeat: int) -> list[dict]:
    """One rank: every N in turn (peak memory reset between them)."""
    import torch

    import seqdsl
    import seqdsl.distributed as sd
    from seqdsl.runner import _rss_peak_reset, _status

    model = seqdsl.load(FILE, **SIZES)
    out = []
    for n in ns:
        g = torch.Generator().manual_seed(0)
        x = [torch.randn(1, 8, n, 64, generator=g) for _ in range(3)]
        if not vanilla and torch.distributed.get_world_size() > 1:
            x = [sd.shard(t, 2) for t in x]           # this rank's rows only
        best, peak = float("inf"), 0
        with torch.no_grad():
            for _ in range(repeat):
                _rss_peak_reset()
                base = _status("VmRSS:")
                torch.distributed.barrier()
                start = time.perf_counter()
                y = _call(model, vanilla, *x)
                torch.distributed.barrier()
                best = min(best, time.perf_counter() - start)
                del y
                peak = max(peak, _status("VmHWM:") - base)
        out.append({"n": n, "seconds": best, "peak": peak})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller N (a smoke run)")
    args = ap.parse_args()
    import seqdsl.distributed as sd

    ns = [1024, 2048] if args.quick else [4096, 8192, 16384]
    rows = {}
    t0 = time.time()
    # the vanilla run stops where its scores outgrow this machine's patience (and memory)
    rows["vanilla"] = sd.launch(f"{__file__}:worker", 1, [n for n in ns if n <= 4096] or ns[:1], True, 2)[0]
    for p in (1, 2, 4):
        res = sd.launch(f"{__file__}:worker", p, ns, False, 2, threads=max(1, (os.cpu_count() or 1) // p))
        rows[p] = [{"n": r0["n"], "seconds": max(r[i]["seconds"] for r in res),
                    "peak": max(r[i]["peak"] for r in res)} for i, r0 in enumerate(res[0])]
    wall = time.time() - t0
    report(rows, ns, wall)


def largest(nproc: int | None, budget: float) -> int | None:
    """The largest N whose per-rank memory formula fits ``budget`` (vanilla: nproc None)."""
    from seqdsl.analysis.distributed import largest_n

    if nproc is None:
        return largest_n(lambda n: predicted_vanilla_formula(n), budget)
    return largest_n(lambda n: predicted_rank_formula(n, nproc), budget)


_formula_cache: dict = {}


def _formula(nproc: int):
    import sympy

    from seqdsl.analysis import analyze_graph
    from seqdsl.analysis.distributed import analyze_distributed
    from seqdsl.api import check

    if nproc not in _formula_cache:
        c = check(FILE, N=1024, **SIZES)
        sec = analyze_distributed(c.graph, analyze_graph(c.graph, c.entry, c.sizes), nproc)
        names = {s: sympy.Symbol(s, positive=True, integer=True) for s in ("N", "P", "B", "H", "Dh", "BLOCK")}
        _formula_cache[nproc] = tuple(sympy.sympify(sec[k], locals=names)
                                      for k in ("memory_per_rank", "inputs_per_rank"))
    return _formula_cache[nproc]


def _at(e, n: int, nproc: int) -> float:
    vals = {"N": n, "P": nproc, **SIZES, "BLOCK": 64}
    return float(e.xreplace({s: vals.get(s.name, 1) for s in e.free_symbols}))


def predicted_rank_formula(n: int, nproc: int) -> float:
    """Per-rank memory with the inputs (what must fit)."""
    return _at(_formula(nproc)[0], n, nproc)


def predicted_extra(n: int, nproc: int) -> float:
    """Per-rank memory above the inputs (what the run measures: inputs exist before the call)."""
    total, inputs = _formula(nproc)
    return _at(total, n, nproc) - _at(inputs, n, nproc)


def predicted_vanilla_formula(n: int) -> float:
    return 4.0 * SIZES["H"] * n * n + 4 * 4.0 * SIZES["H"] * n * SIZES["Dh"]   # scores + q, k, v, o


def report(rows: dict, ns: list[int], wall: float) -> None:
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Sequence-parallel attention against vanilla multi-head attention", "",
             f"`python benchmarks/distributed.py` — {platform.machine()}, {os.cpu_count()} cores shared by every "
             "process (a loaded 2-core VM: the processes of P = 4 time-share two cores, so times do not show a "
             f"speed-up; memory per rank is what scales), torch {__import__('torch').__version__}, gloo, fp32, "
             f"causal, B = 1, H = 8, Dh = 64, forward. Whole run {wall:.0f} s.", "",
             "| N | vanilla: time, peak | P = 1 (tiled) | P = 2 | P = 4 | per-rank peak above the inputs, measured / analysis (P = 1, 2, 4) |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for i, n in enumerate(ns):
        cells = []
        for key in ("vanilla", 1, 2, 4):
            r = next((x for x in rows[key] if x["n"] == n), None)
            if r is None:
                cells.append(f"not run (scores {4 * 8 * n * n / 2**30:.0f} GiB)")
                continue
            cells.append(f"{r['seconds'] * 1e3:.0f} ms, {r['peak'] / 2**20:.0f} MiB, "
                         f"{r['seconds'] / n * 1e6:.1f} µs/token")
        rat = []
        for p in (1, 2, 4):
            rat.append(rows[p][i]["peak"] / predicted_extra(n, p))
        ratios += rat
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + ", ".join(f"{x:.2f}" for x in rat) + " |")
    lines += ["", f"Largest N whose per-rank memory (inputs included) fits {BUDGET / 2**30:.0f} GiB, from the "
              "analysis' formula (`analyze complexity --nproc P --memory 1GiB`) and, for vanilla, scores + q, k, v, o:",
              "",
              "| | N | vs vanilla |", "|---|---|---|"]
    van = largest(None, BUDGET)
    lines.append(f"| vanilla (scores materialised) | {van} | 1× |")
    for p in (1, 2, 4):
        m = largest(p, BUDGET)
        lines.append(f"| seqdsl, P = {p} | {m} | {m / van:.0f}× |")
    lines += ["", f"Measured / predicted per-rank memory: {min(ratios):.2f} – {max(ratios):.2f}; at the smallest N a "
              "fixed ~10-20 MiB per process (allocator, gloo buffers) is most of the measurement.", "",
              "The seed paper's 40× (Hè & Kabic 2023) compares its distributed attention on 4 GPUs with vanilla "
              "attention on one; here the comparison is per-rank memory on one CPU machine, where most of the gain is "
              "the tiled algorithm's O(N) memory and the rest scales with P.", ""]
    (out / "distributed.md").write_text("\n".join(lines))
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels = ["vanilla"] + [f"P={p}" for p in (1, 2, 4)]
    vals = [van] + [largest(p, BUDGET) for p in (1, 2, 4)]
    a.bar(labels, vals)
    a.set_yscale("log")
    a.set_title(f"largest N in {BUDGET / 2**30:.0f} GiB per rank")
    for p in (1, 2, 4):
        b.plot(ns, [rows[p][i]["peak"] / 2**20 for i in range(len(ns))], "o-", label=f"measured P={p}")
        b.plot(ns, [predicted_extra(n, p) / 2**20 for n in ns], "x--", label=f"analysis P={p}")
    b.plot([r["n"] for r in rows["vanilla"]], [r["peak"] / 2**20 for r in rows["vanilla"]], "s-",
           label="vanilla measured")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("N")
    b.set_ylabel("MiB per rank")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "distributed.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
