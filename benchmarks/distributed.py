"""Sequence-parallel multi-head attention against vanilla multi-head attention
(docs/distributed.md; the baseline of the seed paper's "40×" claim, Hè & Kabic 2023).

    python benchmarks/distributed.py [--quick]

Causal multi-head attention, B = 1, H = 8, Dh = 64, fp32, forward (no_grad):

- **vanilla**: the scores [H, N, N] materialised (``algorithm='materialized'``), one process;
- **seqdsl**: ``examples/mixers/softmax_attention.seq`` loaded as a module and run inside
  ``seqdsl.distributed.sequence_parallel`` on P = 1, 2, 4 local gloo processes (P = 1: the
  one-process module, tiled); 8 heads over 2 or 4 ranks: Ulysses (the cost rule's choice).

Measured at each N: the best of 2 times (slowest rank), and each rank's peak resident memory
during the call above its resident size just before it (inputs excluded), after a warm-up
call, with glibc's mmap threshold fixed so that freed tensors leave the resident size. The
analysis (``analyze complexity --nproc P``) gives the per-rank memory formula; the table
sets the measurement beside it. The largest N that fits a per-rank budget: from the formula
(1 GiB and 64 MiB) and measured at 64 MiB (bisection over N, each N run). The ring, forced
at the middle N on 2 and 4 ranks, beside its own formula. Writes
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
FIT_BUDGET = 64 * 2**20   # the budget under which the largest N is also measured (bisection over N)


def _call(model, vanilla: bool, q, k, v, softmax: str = "auto"):
    import torch

    import seqdsl.distributed as sd
    from codegen import masks as M
    from codegen.softmax.torch_impl import softmax_attention

    if vanilla:
        return softmax_attention(q, k, v, M.Causal(0), scale=0.125, algorithm="materialized")
    if torch.distributed.get_world_size() == 1:
        return model(q, k, v)
    with sd.sequence_parallel(softmax=softmax):
        return model(q, k, v)


def _exact_rss() -> None:
    """glibc: every allocation above 64 KiB its own mapping, returned to the system when
    freed (no dynamic threshold, no trimming delay), so that the resident size follows the
    tensors alive and a peak above a baseline is what one call allocated."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)      # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)      # M_TRIM_THRESHOLD
    except OSError:
        pass


def _measure(model, vanilla: bool, x, softmax: str = "auto") -> tuple[float, int]:
    """(seconds, peak resident bytes above the resident size just before) of one call, the
    slowest rank's time and the largest rank's peak."""
    import torch

    from seqdsl.runner import _rss_peak_reset, _status

    _rss_peak_reset()
    base = _status("VmRSS:")
    torch.distributed.barrier()
    start = time.perf_counter()
    y = _call(model, vanilla, *x, softmax=softmax)
    torch.distributed.barrier()
    seconds = time.perf_counter() - start
    del y
    t = torch.tensor([seconds, float(_status("VmHWM:") - base)], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t[0]), int(t[1])


def _inputs(n: int, vanilla: bool):
    import torch

    import seqdsl.distributed as sd

    g = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 8, n, 64, generator=g) for _ in range(3)]
    if not vanilla and torch.distributed.get_world_size() > 1:
        x = [sd.shard(t, 2).clone() for t in x]          # this rank's rows only
    return x


def worker(ns: list[int], vanilla: bool, repeat: int, budget: float | None = None, start_n: int = 0,
           softmax: str = "auto") -> dict:
    """One rank: a warm-up call (the process's one-time allocations: gloo's buffers, lazy
    imports), then every N in turn; then, with ``budget``, the largest N whose measured
    per-rank memory (this rank's inputs + the measured peak above them) fits, by bisection
    from ``start_n`` (the formula's answer)."""
    import torch

    import seqdsl

    _exact_rss()
    model = seqdsl.load(FILE, **SIZES)
    with torch.no_grad():
        _call(model, vanilla, *_inputs(256, vanilla))
        table = []
        for n in ns:
            x = _inputs(n, vanilla)
            runs = [_measure(model, vanilla, x, softmax) for _ in range(repeat)]
            table.append({"n": n, "seconds": min(r[0] for r in runs), "peak": max(r[1] for r in runs)})
        fit = _bisect(model, vanilla, budget, start_n) if budget else None
    return {"table": table, "fit": fit}


def _bisect(model, vanilla: bool, budget: float, start_n: int) -> dict:
    """The largest N (to 2 %) whose measured per-rank total fits ``budget``; every N tried."""
    import torch

    P = torch.distributed.get_world_size()
    tried = {}

    def total(n: int) -> float:
        if n not in tried:
            x = _inputs(n, vanilla)
            held = max(t.numel() for t in x) * 3 * 4          # the largest rank's inputs
            tried[n] = held + _measure(model, vanilla, x)[1]
        return tried[n]

    lo, hi = None, None
    n = max(P, start_n)
    while lo is None or hi is None:                       # bracket from the formula's answer
        if total(n) <= budget:
            lo, n = n, int(n * 1.25)
        else:
            hi, n = n, int(n / 1.25)
        if lo is not None and hi is not None:
            break
    while hi - lo > max(P, 0.02 * lo):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
    return {"n": lo, "tried": sorted((k, v) for k, v in tried.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller N (a smoke run)")
    args = ap.parse_args()
    import seqdsl.distributed as sd

    ns = [1024, 2048] if args.quick else [4096, 8192, 16384]
    budget = FIT_BUDGET / (8 if args.quick else 1)
    rows, fits = {}, {}
    t0, load0 = time.time(), os.getloadavg()[0]
    # the vanilla run stops where its scores outgrow this machine's patience (and memory)
    rows["vanilla"] = sd.launch(f"{__file__}:worker", 1, [n for n in ns if n <= 4096] or ns[:1], True, 2)[0]["table"]
    for p in (1, 2, 4):
        res = sd.launch(f"{__file__}:worker", p, ns, False, 2, budget, largest(p, budget),
                        threads=max(1, (os.cpu_count() or 1) // p))
        rows[p], fits[p] = res[0]["table"], res[0]["fit"]
    # the ring, forced (the rule picks Ulysses for 8 heads): its memory against its formula
    for p in (2, 4):
        rows[f"ring{p}"] = sd.launch(f"{__file__}:worker", p, ns[1:2], False, 2, None, 0, "ring",
                                     threads=max(1, (os.cpu_count() or 1) // p))[0]["table"]
    wall = time.time() - t0
    report(rows, ns, fits, budget, wall, (load0, os.getloadavg()[0]))


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
        _formula_cache[nproc] = tuple(sympy.sympify(sec.get(k, sec["memory_per_rank"]), locals=names)
                                      for k in ("memory_per_rank", "inputs_per_rank", "memory_per_rank_ring"))
    return _formula_cache[nproc]


def _at(e, n: int, nproc: int) -> float:
    vals = {"N": n, "P": nproc, **SIZES, "BLOCK": 64}
    return float(e.xreplace({s: vals.get(s.name, 1) for s in e.free_symbols}))


def predicted_rank_formula(n: int, nproc: int) -> float:
    """Per-rank memory with the inputs (what must fit)."""
    return _at(_formula(nproc)[0], n, nproc)


def predicted_extra(n: int, nproc: int, ring: bool = False) -> float:
    """Per-rank memory above the inputs (what the run measures: inputs exist before the call);
    ``ring``: with the softmax on the ring."""
    total, inputs, with_ring = _formula(nproc)
    return _at(with_ring if ring else total, n, nproc) - _at(inputs, n, nproc)


def predicted_vanilla_formula(n: int) -> float:
    return 4.0 * SIZES["H"] * n * n + 4 * 4.0 * SIZES["H"] * n * SIZES["Dh"]   # scores + q, k, v, o


def report(rows: dict, ns: list[int], fits: dict, budget: float, wall: float, load: tuple) -> None:
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Sequence-parallel attention against vanilla multi-head attention", "",
             f"`python benchmarks/distributed.py` — {platform.machine()}, {os.cpu_count()} cores shared by every "
             "process (a loaded 2-core VM, shared with other jobs while this ran: the processes of P = 4 "
             "time-share two cores, so times do not show a speed-up; memory per rank is what scales), "
             f"torch {__import__('torch').__version__}, gloo, fp32, causal, B = 1, H = 8, Dh = 64, forward "
             f"(no_grad). Whole run {wall:.0f} s; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.", "",
             "Memory: each rank's peak resident size during one call above its resident size just before "
             "the call (inputs excluded), after a warm-up call in the same process (the one-time allocations "
             "of gloo and lazy imports), with glibc's mmap threshold fixed at 64 KiB so that freed tensors "
             "leave the resident size; the largest rank's. Analysis: `analyze complexity --nproc P`'s "
             "per-rank memory less its inputs.", "",
             "| N | vanilla: time, peak | P = 1 (tiled) | P = 2 | P = 4 | per-rank peak above the inputs, "
             "measured / analysis (P = 1, 2, 4) |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for i, n in enumerate(ns):
        cells = []
        for key in ("vanilla", 1, 2, 4):
            r = next((x for x in rows[key] if x["n"] == n), None)
            if r is None:
                cells.append(f"not run (scores {4 * 8 * n * n / 2**30:.0f} GiB)")
                continue
            cells.append(f"{r['seconds'] * 1e3:.0f} ms, {r['peak'] / 2**20:.1f} MiB, "
                         f"{r['seconds'] / n * 1e6:.1f} µs/token")
        rat = [rows[p][i]["peak"] / predicted_extra(n, p) for p in (1, 2, 4)]
        ratios += rat
        lines.append(f"| {n} | " + " | ".join(cells) + " | " + ", ".join(f"{x:.2f}" for x in rat) + " |")
    for p in (2, 4):
        r = rows[f"ring{p}"][0]
        pred = predicted_extra(r["n"], p, ring=True)
        ratios.append(r["peak"] / pred)
        lines.append(f"| {r['n']}, ring (forced) | — | — | " + (" — |" if p == 4 else "")
                     + f" {r['seconds'] * 1e3:.0f} ms, {r['peak'] / 2**20:.1f} MiB (analysis {pred / 2**20:.1f}), "
                     f"{r['seconds'] / r['n'] * 1e6:.1f} µs/token |" + (" — |" if p == 2 else "")
                     + f" {r['peak'] / pred:.2f} (P = {p}) |")
    lines += ["", f"Measured / predicted per-rank memory: {min(ratios):.2f} – {max(ratios):.2f}.", "",
              "Largest N whose per-rank memory (inputs included) fits a budget: from the analysis' formula "
              f"(`analyze complexity --nproc P --memory ...`) at {BUDGET / 2**30:.0f} GiB and at "
              f"{budget / 2**20:.0f} MiB, and measured at {budget / 2**20:.0f} MiB (bisection over N to 2 %, "
              "each N run: the rank's inputs + its measured peak); vanilla: scores + q, k, v, o.", "",
              f"| | formula, {BUDGET / 2**30:.0f} GiB | vs vanilla | formula, {budget / 2**20:.0f} MiB | "
              f"measured, {budget / 2**20:.0f} MiB | measured / formula |", "|---|---|---|---|---|---|"]
    van = largest(None, BUDGET)
    lines.append(f"| vanilla (scores materialised) | {van} | 1× | {largest(None, budget)} | — | — |")
    for p in (1, 2, 4):
        m, small, got = largest(p, BUDGET), largest(p, budget), fits[p]["n"]
        lines.append(f"| seqdsl, P = {p} | {m} | {m / van:.0f}× | {small} | {got} | {got / small:.2f} |")
    lines += ["", "N tried by the bisection (per-rank total, MiB): " + "; ".join(
        f"P = {p}: " + ", ".join(f"{n} → {b / 2**20:.1f}" for n, b in fits[p]["tried"]) for p in (1, 2, 4)), "",
              "P = 2 and 4 run Ulysses (8 heads split evenly: the cost rule's choice), in rounds of one head "
              "per rank: a rank holds its inputs, its output and one round's resharded tensors.", "",
              "The seed paper's 40× (Hè & Kabic 2023) compares its distributed attention on 4 GPUs with vanilla "
              "attention on one; here the comparison is per-rank memory on one CPU machine, where most of the gain is "
              "the tiled algorithm's O(N) memory and the rest scales with P.", ""]
    (out / "distributed.md").write_text("\n".join(lines))
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    import numpy as np

    labels = ["vanilla"] + [f"P={p}" for p in (1, 2, 4)]
    at = np.arange(len(labels))
    a.bar(at - 0.2, [largest(None, budget)] + [largest(p, budget) for p in (1, 2, 4)], 0.4, label="analysis")
    a.bar(at[1:] + 0.2, [fits[p]["n"] for p in (1, 2, 4)], 0.4, label="measured (bisection)")
    a.set_xticks(at, labels)
    a.set_yscale("log")
    a.legend(fontsize=7)
    a.set_title(f"largest N in {budget / 2**20:.0f} MiB per rank")
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
