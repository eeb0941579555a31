"""CPU benchmarks of the PyTorch lowering against what a user would run instead.

Every comparison runs side by side in this one process, on the same inputs, and is
reported as a ratio. Writes benchmarks/results/cpu.md (a table, the machine described)
and benchmarks/results/cpu.png.

    python benchmarks/cpu.py            # everything (several minutes)
    python benchmarks/cpu.py --quick    # smaller sizes, to see that it runs
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from codegen import masks as M
from codegen.linear.torch_impl import linear_attention, selective_scan
from codegen.softmax.torch_impl import softmax_attention
from codegen.toeplitz.torch_impl import toeplitz_mix

OUT = Path(__file__).resolve().parent / "results"


def best_of(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fwd(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


def fwd_bwd(fn, *tensors):
    def run():
        for t in tensors:
            t.grad = None
        fn().square().mean().backward()
    return run


def peak_rss_of(fn) -> int | None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0
    base = status("VmRSS:")
    fn()
    return status("VmHWM:") - base


def rand(*shape, grad=False):
    return torch.randn(*shape, requires_grad=grad)


ROWS: list[dict] = []


def row(case: str, ours: float, theirs: float, baseline: str, target: str, note: str = "") -> None:
    ratio = ours / theirs
    ROWS.append({"case": case, "ours": ours, "theirs": theirs, "baseline": baseline, "ratio": ratio,
                 "target": target, "note": note})
    print(f"{case:<58} ours {ours * 1e3:9.1f} ms  {baseline} {theirs * 1e3:9.1f} ms  ratio {ratio:5.2f}  ({target})")


def bench_causal(n: int):
    q, k, v = (rand(1, 8, n, 64, grad=True) for _ in range(3))
    ours = lambda: softmax_attention(q, k, v, M.Causal(0), scale=0.125, algorithm="tiled")  # noqa: E731
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    row(f"causal softmax B1 H8 N{n} D64, forward", best_of(fwd(ours)), best_of(fwd(sdpa)), "SDPA", "≤ 1.1")
    row(f"causal softmax B1 H8 N{n} D64, fwd+bwd", best_of(fwd_bwd(ours, q, k, v)),
        best_of(fwd_bwd(sdpa, q, k, v)), "SDPA", "≤ 1.2")


def bench_window(n: int, w: int = 256):
    q, k, v = (rand(1, 2, n, 64) for _ in range(3))
    mask = M.And(M.Causal(0), M.Window(w))
    ours = lambda: softmax_attention(q, k, v, mask, scale=0.125, algorithm="tiled")  # noqa: E731
    dense_mask = mask.dense(n, n)
    dense = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask)  # noqa: E731
    first = time.perf_counter()
    with torch.no_grad():
        ours()
    first = time.perf_counter() - first
    t_ours = best_of(fwd(ours))
    row(f"sliding window H2 N{n} W{w}, forward", t_ours, best_of(fwd(dense)), "dense masked SDPA", "≤ 1/20",
        note=f"first result after {first:.2f} s")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        block_mask = create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < w), None, None, n, n, device="cpu")
        flex = torch.compile(flex_attention)
        start = time.perf_counter()
        with torch.no_grad():
            flex(q, k, v, block_mask=block_mask)
        compile_s = time.perf_counter() - start
        row(f"sliding window H2 N{n} W{w}, forward", t_ours, best_of(fwd(lambda: flex(q, k, v, block_mask=block_mask))),
            "compiled FlexAttention", "≤ 1.5", note=f"Flex first call {compile_s:.1f} s; ours {first:.2f} s")
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        print(f"FlexAttention unavailable here: {type(err).__name__}: {err}")
    peak_ours = peak_rss_of(fwd(ours))
    print(f"  peak extra memory: ours {peak_ours and peak_ours / 2**20:.1f} MiB")


def bench_linear(n: int):
    """Chunked linear attention / retention / GLA against flash-linear-attention's plain-PyTorch
    chunked forms (rewritten in codegen/linear/bench.py, imported from there), forward and
    forward+backward, H4 Dh64, fp32."""
    from codegen.linear.bench import chunk_gla_baseline, chunk_linear_attn_baseline, chunk_simple_gla_stacked_baseline

    h, d = 4, 64
    bthd = [rand(1, n, h, d, grad=True) for _ in range(3)]
    bhnd = [x.detach().transpose(1, 2).contiguous().requires_grad_() for x in bthd]
    gamma = 1 - 2.0 ** (-5 - torch.arange(float(h)))
    g = F.logsigmoid(torch.randn(1, h, n, d)) / 16
    g_bthd = g.transpose(1, 2).contiguous()
    q, k, v = bhnd
    cases = [
        ("chunked linear attention", lambda: linear_attention(q, k, v, scale=d ** -0.5),
         lambda: chunk_linear_attn_baseline(*bthd), "fla naive_chunk_linear_attn"),
        ("retention", lambda: linear_attention(q, k, v, decay=gamma, scale=d ** -0.5),
         lambda: chunk_simple_gla_stacked_baseline(*bthd, torch.log(gamma).expand(1, n, h)),
         "fla naive_chunk_simple_gla (unbind)"),
        ("GLA", lambda: linear_attention(q, k, v, decay=g, log_decay=True, scale=d ** -0.5),
         lambda: chunk_gla_baseline(*bthd, g_bthd), "fla naive chunk GLA"),
    ]
    for name, ours, theirs, base in cases:
        row(f"{name} H{h} N{n} D{d}, forward", best_of(fwd(ours)), best_of(fwd(theirs)), base, "≤ 1.0")
        row(f"{name} H{h} N{n} D{d}, fwd+bwd", best_of(fwd_bwd(ours, *bhnd)), best_of(fwd_bwd(theirs, *bthd)), base,
            "≤ 1.0")


def bench_scan(n: int, dm: int = 256, s: int = 16):
    u, dt = torch.randn(1, dm, n), torch.rand(1, dm, n) * 0.1
    a = -torch.rand(dm, s)
    bm, c = torch.randn(1, s, n), torch.randn(1, s, n)
    d_skip = torch.randn(dm)

    def ours():
        return selective_scan(u, dt, a, bm, c, d_skip)          # the factored gate Δ ⊗ A (OuterGate)

    def loop():
        h = torch.zeros(1, dm, s)
        ys = []
        for t in range(n):
            h = torch.exp(dt[:, :, t, None] * a) * h + dt[:, :, t, None] * bm[:, None, :, t] * u[:, :, t, None]
            ys.append((h * c[:, None, :, t]).sum(-1))
        return torch.stack(ys, -1) + u * d_skip[:, None]

    row(f"selective scan Dm{dm} S{s} N{n}, forward", best_of(fwd(ours)), best_of(fwd(loop), repeat=1),
        "sequential loop", "≤ 1/10")


def bench_long_conv(n: int, d: int = 64, state: int = 64):
    from codegen.toeplitz.kernels import init_ssm_params

    half = state // 2
    shapes = {"log_dt": (d,), "log_A_real": (d, half), "A_imag": (d, half), "C_re": (d, half), "C_im": (d, half)}
    params = init_ssm_params("diag", "s4d_lin", shapes, torch.Generator().manual_seed(0))
    u = torch.randn(1, n, d)
    run = lambda: toeplitz_mix(u, kind="diag", params=params, disc="zoh", conj=True, mimo=False,  # noqa: E731
                               causal=True, algorithm="chunked_fft", chunk=4096)
    start = time.perf_counter()
    peak = peak_rss_of(fwd(run))
    elapsed = time.perf_counter() - start
    ROWS.append({"case": f"S4D layer D{d} state {state} N{n}, forward (chunked FFT)", "ours": elapsed,
                 "theirs": float("nan"), "baseline": "—", "ratio": float("nan"), "target": "< 2 GB",
                 "note": f"peak extra memory {peak / 2**30:.2f} GiB" if peak else ""})
    print(f"S4D N{n}: {elapsed:.2f} s, peak {peak and peak / 2**30:.2f} GiB")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
            cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, fp32"


def write(rows, quick: bool) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["# CPU benchmarks", "", f"Machine: {machine()}.", "",
             "Each row runs ours and the baseline side by side in one process (best of 3). "
             "ratio = ours / baseline (lower is better).", "",
             "| case | ours (ms) | baseline | baseline (ms) | ratio | target | note |",
             "|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours'] * 1e3:.1f} | {r['baseline']} | {r['theirs'] * 1e3:.1f} | "
                     f"{r['ratio']:.2f} | {r['target']} | {r['note']} |")
    if quick:
        lines += ["", "(--quick: reduced sizes, not the targets' sizes)"]
    (OUT / ("cpu-quick.md" if quick else "cpu.md")).write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = [r for r in rows if r["ratio"] == r["ratio"]]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(named) + 1.5))
    ax.barh([f"{r['case']} vs {r['baseline']}" for r in named], [r["ratio"] for r in named])
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("time ratio ours / baseline (log; < 1 is faster)")
    fig.tight_layout()
    fig.savefig(OUT / ("cpu-quick.png" if quick else "cpu.png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.quick:
        bench_causal(1024)
        bench_window(4096)
        bench_linear(4096)
        bench_scan(1024)
        bench_long_conv(1 << 16)
    else:
        bench_causal(4096)
        bench_window(16384)
        bench_linear(16384)
        bench_scan(4096)
        bench_long_conv(1 << 20)
    write(ROWS, args.quick)


if __name__ == "__main__":
    main()
