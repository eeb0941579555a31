"""Step decoding against recomputing the whole forward, per generated token (issue 13).

For Mamba-, RetNet-, H3- and Transformer-style language models built from the example
files at the same width (``--set`` shrinks width and depth equally; the sizes are in
CASES), at contexts of 512, 4096 and 16384 tokens, side by side in one process:

- **recompute**: the next token's logits by one full forward over the context (what a
  model without a state must do for every token): tokens/s = 1 / the forward's time;
- **step**: ``model.prefill`` over the context once, then ``model.step`` one token at a
  time from the state: tokens/s of the steps (best of ``--steps`` steps after a warm-up;
  the contexts' steps taken in turn, so that the shared machine's load spikes hit each
  context alike and the per-token time is compared across contexts fairly);
- the state's memory per sequence: its rows (``state.used_nbytes``) next to what ``analyze
  complexity --decode`` predicts, and what it holds (``state.nbytes``: a KV cache's buffer,
  made for the context and the steps by ``prefill(..., max_tokens=...)``);
- for the Transformer, the same steps with the KV cache copied into a new tensor at every
  step (its buffers dropped before each step: what a ``torch.cat`` per token did), side by side.

Writes benchmarks/results/decode.md and decode.png.

    python benchmarks/decode.py [--contexts 512 4096 16384] [--steps 16]
"""

from __future__ import annotations

import argparse
import os
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
COPIED = "Transformer (H=4, F=2D)"      # also timed with its cache copied at every step


def _unbuffered(state):
    """The state with plain tensors: the next step copies every cached row into a new buffer."""
    from codegen.torch.decode import DecodeState
    return DecodeState({k: dict(part) for k, part in state.items()}, position=state.position)


def run_steps(model, tokens: dict, states: dict, steps: int, copied: bool = False) -> tuple[dict, dict, dict]:
    """Steps from the state of every context in turn (one step per context, round after round:
    a load spike on the shared machine hits every context alike): per context, the times of
    ``steps`` steps after two warm-up rounds, the same with the cache copied at every step
    (its buffers dropped before the step, not timed; interleaved with the others), and the
    last state."""
    times = {n: [] for n in states}
    copies = {n: [] for n in states}
    others = dict(states)
    with torch.no_grad():
        for i in range(steps + 2):
            for n in states:
                start = time.perf_counter()
                logits, states[n] = model.step(tokens[n], states[n])
                if i >= 2:                                     # two warm-up rounds
                    times[n].append(time.perf_counter() - start)
                if copied:
                    other = _unbuffered(others[n])
                    start = time.perf_counter()
                    _, others[n] = model.step(tokens[n], other)
                    if i >= 2:
                        copies[n].append(time.perf_counter() - start)
                tokens[n] = logits.argmax(-1)
    return times, copies, states


def measure(path: str, sizes: dict, contexts: list[int], steps: int, copied: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model = seqdsl.load(ROOT / path, **sizes).eval()
    ok, why = model.can_decode
    if not ok:
        raise SystemExit(f"{path}: cannot decode: {why}")
    gen = torch.Generator().manual_seed(0)
    rows, states, last = [], {}, {}
    for n in contexts:
        tokens = torch.randint(0, sizes["V"], (1, n), generator=gen)
        with torch.no_grad():
            model(tokens[:, :64])                              # warm the algorithm choice and caches
            recompute = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                model(tokens)
                recompute = min(recompute, time.perf_counter() - start)
            start = time.perf_counter()
            _, states[n] = model.prefill(tokens, max_tokens=n + steps + 2)
            prefill = time.perf_counter() - start
        last[n] = tokens[:, -1]
        rows.append(dict(n=n, recompute=recompute, prefill=prefill))
    times, copies, states = run_steps(model, last, states, steps, copied)
    for r in rows:
        n, state = r["n"], states[r["n"]]
        report = seqdsl.analyze(ROOT / path, decode=True, **sizes, N=n + steps + 2).to_dict()["decode"]
        r.update(step=min(times[n]), median=statistics.median(times[n]), state=state.used_nbytes, held=state.nbytes,
                 predicted=report["total"]["values"]["state_bytes"], predicted_at=n + steps + 2)
        if copied:
            r.update(copy=min(copies[n]), copy_median=statistics.median(copies[n]))
        print(f"  N={n}: recompute {r['recompute'] * 1e3:.1f} ms, step {r['step'] * 1e3:.2f} ms (median "
              f"{r['median'] * 1e3:.2f}) ({r['recompute'] / r['step']:.0f}x), state {state.used_nbytes / 1024:.1f} KiB "
              f"(held {state.nbytes / 1024:.1f})" + (f"; copied cache: {r['copy'] * 1e3:.2f} ms" if copied else ""),
              flush=True)
    return rows


def cache_alone(contexts: list[int], steps: int, heads: int = 4, dh: int = 16) -> list[dict]:
    """One causal softmax layer's step (codegen/softmax/step.py) alone, B = 1, at each context:
    its cache written in place against copied at every step (plain tensors: a new buffer per
    step), the contexts and the two taken in turn; best of ``steps``."""
    from codegen import masks as M
    from codegen.softmax import step as softmax_step
    from codegen.softmax.torch_impl import softmax_attention

    gen = torch.Generator().manual_seed(1)
    kw = dict(mask=M.Causal(0), scale=dh ** -0.5)
    caches, plain, out = {}, {}, {n: ([], []) for n in contexts}
    for n in contexts:
        k, v = (torch.randn(1, heads, n, dh, generator=gen) for _ in range(2))
        _, caches[n] = softmax_step.prefill(softmax_attention, (k[..., -1:, :], k, v), dict(kw, mask=None),)
        plain[n] = dict(caches[n])
    x = torch.randn(1, heads, 1, dh, generator=gen)
    with torch.no_grad():
        for i in range(steps + 2):
            for n in contexts:
                for j, (table, keep) in enumerate(((caches, True), (plain, False))):
                    cache = table[n] if keep else dict(table[n])
                    start = time.perf_counter()
                    _, table[n] = softmax_step.step(softmax_attention, (x, x, x), kw, cache, n + i)
                    if i >= 2:
                        out[n][j].append(time.perf_counter() - start)
    return [dict(n=n, inplace=min(a), copied=min(b), inplace_median=statistics.median(a),
                 copied_median=statistics.median(b)) for n, (a, b) in out.items()]


def fmt_bytes(b: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def write(results: dict, contexts: list[int], steps: int, seconds: float, load: tuple,
          alone: list[dict] | None = None) -> None:
    OUT.mkdir(exist_ok=True)
    lines = [
        "# Step decoding vs recomputing the forward",
        "",
        f"Machine: {platform.machine()}, a shared 2-core VM under load (6 engineers), torch threads: "
        f"{torch.get_num_threads()} for both sides, "
        f"torch {torch.__version__}, fp32, batch 1. Models from the example files at "
        f"D = {WIDTH['D']}, L = {WIDTH['L']}, V = {WIDTH['V']} (sizes in each row). Recompute: one full forward "
        "over the context (best of 2) per generated token; step: `model.step` after `model.prefill` over the "
        f"context (best of {steps} steps after 2 warm-up steps, the contexts' steps taken in turn; the median in brackets). State: `state.used_nbytes` per sequence "
        "after the steps (the rows kept), what `seqdsl analyze complexity --decode` predicts at that length, and "
        "`state.nbytes` (held: a KV cache's buffer, made by `prefill(..., max_tokens=context + steps)`). "
        f"Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end, on 2 cores. "
        f"Run time {seconds:.0f} s (`python benchmarks/decode.py`).",
        "",
        "| model | context | recompute tok/s | step tok/s | step / recompute | step ms/token (median) | prefill s "
        "| state / sequence | predicted | held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['n']} | {1 / r['recompute']:.3g} | {1 / r['step']:.4g} | "
                         f"{r['recompute'] / r['step']:.0f}x | {r['step'] * 1e3:.2f} ({r['median'] * 1e3:.2f}) | {r['prefill']:.2f} | "
                         f"{fmt_bytes(r['state'])} | {fmt_bytes(r['predicted'])} | {fmt_bytes(r['held'])} |")
    lines += ["", "Per-token step time from the shortest to the longest context (flat for a fixed-size state, "
              "linear in the context for a KV cache):", ""]
    for name, rows in results.items():
        lines.append(f"- {name}: {rows[0]['step'] * 1e3:.2f} ms -> {rows[-1]['step'] * 1e3:.2f} ms "
                     f"(x{rows[-1]['step'] / rows[0]['step']:.2f} for x{rows[-1]['n'] // rows[0]['n']} context)")
    for name, rows in results.items():
        if "copy" not in rows[0]:
            continue
        lines += ["", f"{name}: the KV cache written in place (its buffer) against copied into a new tensor at every "
                  "step (what `torch.cat` per token did): the same steps from the same state, taken in turn:", "",
                  "| context | in place ms/token (median) | copied ms/token (median) | copied / in place |",
                  "|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['n']} | {r['step'] * 1e3:.2f} ({r['median'] * 1e3:.2f}) | {r['copy'] * 1e3:.2f} "
                         f"({r['copy_median'] * 1e3:.2f}) | {r['copy'] / r['step']:.2f}x |")
    if alone:
        lines += ["", "The cache alone: one causal softmax layer's step (`codegen/softmax/step.py`, B = 1, H = 4, "
                  "Dh = 16 as in the Transformer above), its cache written in place against copied into a new "
                  "tensor at every step, taken in turn (best of the steps; median in brackets):", "",
                  "| context | in place ms/token | copied ms/token | copied / in place |",
                  "|---:|---:|---:|---:|"]
        for r in alone:
            lines.append(f"| {r['n']} | {r['inplace'] * 1e3:.3f} ({r['inplace_median'] * 1e3:.3f}) | "
                         f"{r['copied'] * 1e3:.3f} ({r['copied_median'] * 1e3:.3f}) | {r['copied'] / r['inplace']:.2f}x |")
        lo, hi = alone[0], alone[-1]
        if hi["n"] > lo["n"]:
            def slope(key: str) -> float:
                return (hi[key] - lo[key]) * 1e6 / (hi["n"] - lo["n"])     # ms per 1000 keys
            lines += ["", f"From {lo['n']} to {hi['n']} keys the step grows by {slope('inplace'):.4f} ms per 1000 keys in "
                      f"place and {slope('copied'):.4f} ms copied (a fixed {lo['inplace'] * 1e3:.3f} ms of calls and "
                      "small ops below that)."]
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
        if "copy" in rows[0]:
            a.plot(ns, [r["copy"] * 1e3 for r in rows], "^:", color=color, label=f"{name}: step, cache copied")
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
    load = os.getloadavg()[0]
    results = {}
    for name, path, sizes in CASES:
        print(name, flush=True)
        results[name] = measure(path, sizes, args.contexts, args.steps, copied=name == COPIED)
    print("softmax step alone", flush=True)
    alone = cache_alone(args.contexts, args.steps)
    for r in alone:
        print(f"  N={r['n']}: in place {r['inplace'] * 1e3:.3f} ms, copied {r['copied'] * 1e3:.3f} ms", flush=True)
    write(results, args.contexts, args.steps, time.perf_counter() - start, (load, os.getloadavg()[0]), alone)
    print(f"wrote {OUT / 'decode.md'} and decode.png")


if __name__ == "__main__":
    main()
