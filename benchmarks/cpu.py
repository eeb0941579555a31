"""CPU benchmarks of the PyTorch lowering against what a user would run instead.

Every comparison runs side by side in this one process, on the same inputs, and is
reported as a ratio. Writes benchmarks/results/cpu.md (a table, the machine described)
and benchmarks/results/cpu.png.

    python benchmarks/cpu.py            # everything (several minutes)
    python benchmarks/cpu.py --quick    # smaller sizes, to see that it runs (writes cpu-quick.md)

The long-sequence rows run in a fresh child process of this script (``--probe CASE N``):
one timed forward, then glibc's mmap threshold is fixed at 64 KiB and a second forward's
peak memory is measured, so that freed buffers leave the process and the resident
high-water mark (VmHWM, reset through clear_refs) is the peak of the call's own live
tensors, not of what an earlier call or benchmark left in the heap.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import seqdsl
from codegen import masks as M
from codegen.linear.torch_impl import linear_attention, selective_scan
from codegen.softmax.torch_impl import softmax_attention
from codegen.toeplitz.torch_impl import toeplitz_mix

OUT = Path(__file__).resolve().parent / "results"


def side_by_side(ours, theirs, repeat: int = 3) -> tuple[float, float]:
    """Best times of ``ours`` and ``theirs``, run alternately after a warm-up of each, so that a
    slow or fast phase of a shared machine falls on both."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeat):
        for fn, times in ((ours, a), (theirs, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(a), min(b)


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


def ratio_limit(target: str) -> float:
    """The largest ratio a target such as "≤ 1.1" or "≤ 1/20" allows."""
    value = target.removeprefix("≤").strip()
    num, _, den = value.partition("/")
    return float(num) / float(den or 1)


def row(case: str, ours: float, theirs: float, baseline: str, target: str, note: str = "") -> None:
    ratio = ours / theirs
    met = "yes" if ratio <= ratio_limit(target) else "no"
    ROWS.append({"case": case, "ours": ours, "theirs": theirs, "baseline": baseline, "ratio": ratio,
                 "target": f"ratio {target}", "met": met, "note": note})
    print(f"{case:<58} ours {ours * 1e3:9.1f} ms  {baseline} {theirs * 1e3:9.1f} ms  ratio {ratio:5.2f}  "
          f"({target}: {met})")


def memory_row(case: str, seconds: float, target: str, met: bool | None, note: str) -> None:
    """A row without a baseline to time against: its target is on memory (ratio NaN)."""
    met_s = "n/a" if met is None else ("yes" if met else "no")
    ROWS.append({"case": case, "ours": seconds, "theirs": float("nan"), "baseline": "—", "ratio": float("nan"),
                 "target": target, "met": met_s, "note": note})
    print(f"{case:<58} {seconds:.2f} s  ({target}: {met_s})  {note}")


def bench_causal(n: int):
    q, k, v = (rand(1, 8, n, 64, grad=True) for _ in range(3))
    ours = lambda: softmax_attention(q, k, v, M.Causal(0), scale=0.125, algorithm="tiled")  # noqa: E731
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    # what a user gets: the mixer loaded from its .seq file, with the selector's choice
    model = seqdsl.load(ROOT / "examples" / "mixers" / "softmax_attention.seq", B=1, H=8, N=n, Dh=64, causal=1)
    chosen = model.choices[0].algorithm
    loaded = lambda: model(q, k, v)  # noqa: E731
    row(f"causal softmax B1 H8 N{n} D64, forward (seqdsl.load: {chosen})", *side_by_side(fwd(loaded), fwd(sdpa)),
        "SDPA", "≤ 1.1")
    row(f"causal softmax B1 H8 N{n} D64, fwd+bwd (seqdsl.load: {chosen})",
        *side_by_side(fwd_bwd(loaded, q, k, v), fwd_bwd(sdpa, q, k, v)), "SDPA", "≤ 1.2")
    # the tiled algorithm forced (what any other mask runs)
    row(f"causal softmax B1 H8 N{n} D64, forward (tiled forced)", *side_by_side(fwd(ours), fwd(sdpa)), "SDPA",
        "≤ 1.1")
    row(f"causal softmax B1 H8 N{n} D64, fwd+bwd (tiled forced)",
        *side_by_side(fwd_bwd(ours, q, k, v), fwd_bwd(sdpa, q, k, v)), "SDPA", "≤ 1.2")


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
    row(f"sliding window H2 N{n} W{w}, forward", *side_by_side(fwd(ours), fwd(dense)), "dense masked SDPA", "≤ 1/20",
        note=f"first result after {first:.2f} s")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        block_mask = create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < w), None, None, n, n, device="cpu")
        flex = torch.compile(flex_attention)
        start = time.perf_counter()
        with torch.no_grad():
            flex(q, k, v, block_mask=block_mask)
        compile_s = time.perf_counter() - start
        row(f"sliding window H2 N{n} W{w}, forward",
            *side_by_side(fwd(ours), fwd(lambda: flex(q, k, v, block_mask=block_mask))),
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
        row(f"{name} H{h} N{n} D{d}, forward", *side_by_side(fwd(ours), fwd(theirs)), base, "≤ 1.0")
        row(f"{name} H{h} N{n} D{d}, fwd+bwd", *side_by_side(fwd_bwd(ours, *bhnd), fwd_bwd(theirs, *bthd)), base,
            "≤ 1.0")


def bench_scan(n: int, dm: int = 256, s: int = 16):
    u, dt = torch.randn(1, dm, n, requires_grad=True), (torch.rand(1, dm, n) * 0.1).requires_grad_()
    a = (-torch.rand(dm, s)).requires_grad_()
    bm, c = torch.randn(1, s, n, requires_grad=True), torch.randn(1, s, n, requires_grad=True)
    d_skip = torch.randn(dm, requires_grad=True)

    def ours():
        return selective_scan(u, dt, a, bm, c, d_skip)          # the factored gate Δ ⊗ A (OuterGate)

    def loop():
        h = torch.zeros(1, dm, s)
        ys = []
        for t in range(n):
            h = torch.exp(dt[:, :, t, None] * a) * h + dt[:, :, t, None] * bm[:, None, :, t] * u[:, :, t, None]
            ys.append((h * c[:, None, :, t]).sum(-1))
        return torch.stack(ys, -1) + u * d_skip[:, None]

    row(f"selective scan Dm{dm} S{s} N{n}, forward", *side_by_side(fwd(ours), fwd(loop), repeat=5),
        "sequential loop", "≤ 1/10")
    # training: our hand-written backward against autograd through the loop
    row(f"selective scan Dm{dm} S{s} N{n}, fwd+bwd",
        *side_by_side(fwd_bwd(ours, u, dt, a, bm, c, d_skip), fwd_bwd(loop, u, dt, a, bm, c, d_skip), repeat=1),
        "sequential loop (autograd)", "≤ 1/10")


# ---- long sequences: time of one forward and peak extra memory, in a fresh process ----------

GB = 1e9
GiB = float(1 << 30)
ROOT = Path(__file__).resolve().parents[1]


def _case_s4d(n: int, d: int = 64, state: int = 64):
    from codegen.toeplitz.kernels import init_ssm_params

    half = state // 2
    shapes = {"log_dt": (d,), "log_A_real": (d, half), "A_imag": (d, half), "C_re": (d, half), "C_im": (d, half)}
    params = init_ssm_params("diag", "s4d_lin", shapes, torch.Generator().manual_seed(0))
    u = torch.randn(1, n, d)
    run = lambda: toeplitz_mix(u, kind="diag", params=params, disc="zoh", conj=True, mimo=False,  # noqa: E731
                               causal=True, algorithm="chunked_fft", chunk=4096)
    return run, 2 * u.nbytes, "chunked_fft"


def _case_h3(n: int, d: int = 64, diag_state: int = 64):
    import seqdsl

    model = seqdsl.load(ROOT / "examples" / "mixers" / "h3.seq", B=1, N=n, D=d, diag_state=diag_state)
    inputs = model.example_inputs()
    algorithms = ", ".join(f"{c.path} {c.algorithm}" for c in model.choices)
    return (lambda: model(*inputs)), 4 * inputs[0].nbytes, algorithms


def _linear_inputs(n: int, h: int, d: int):
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    return q, k, v


def _case_linear(n: int, h: int = 4, d: int = 64):
    q, k, v = _linear_inputs(n, h, d)
    return (lambda: linear_attention(q, k, v, scale=d ** -0.5)), 4 * q.nbytes, "chunked, chunk 64"


def _case_gla(n: int, h: int = 4, d: int = 64):
    q, k, v = _linear_inputs(n, h, d)
    g = F.logsigmoid(torch.randn(1, h, n, d)) / 16
    run = lambda: linear_attention(q, k, v, decay=g, log_decay=True, scale=d ** -0.5)  # noqa: E731
    return run, 5 * q.nbytes, "chunked, chunk 64"


PROBES = {"s4d": _case_s4d, "h3": _case_h3, "linear": _case_linear, "gla": _case_gla}


def probe_main(case: str, n: int) -> None:
    """Child process: warm up at a small N (libraries load their workspaces once), then time
    one forward at N and measure the peak resident memory it adds (inputs excluded, the
    output and every temporary included). Prints one JSON line."""
    import json

    torch.manual_seed(0)
    warm, _, _ = PROBES[case](min(n, 4096))
    fwd(warm)()
    del warm
    run, io_bytes, algorithm = PROBES[case](n)
    start = time.perf_counter()
    fwd(run)()
    seconds = time.perf_counter() - start
    fixed = _fix_mmap_threshold()
    peak = peak_rss_of(fwd(run))
    print(json.dumps({"seconds": seconds, "peak": peak, "io": io_bytes, "algorithm": algorithm,
                      "mmap_threshold_fixed": fixed}))


def _fix_mmap_threshold() -> bool:
    """glibc: from now on every allocation ≥ 64 KiB is its own mapping, returned to the OS
    when freed, so VmHWM shows the peak of live tensors (a heap would recycle freed memory
    that an earlier call left resident and hide it). Set after the timed call: per-allocation
    mappings cost page faults (about 3× the time of a chunked forward here)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 16) == 1 and libc.mallopt(m_trim_threshold, 0) == 1
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


def probe(case: str, n: int) -> dict:
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", case, str(n)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB"


def bench_long(case: str, label: str, n: int, limit_bytes: float | None = None) -> None:
    """One forward at N, and the same at N/4 so that the growth of the peak is visible:
    linear in N gives ×4, quadratic ×16. Target: below ``limit_bytes`` at N if given,
    else growth ≤ ×5 (linear in N, with some slack for fixed working sets)."""
    small, large = probe(case, n // 4), probe(case, n)
    if not large["mmap_threshold_fixed"]:
        print(f"  {case}: glibc's mallopt unavailable; the peak may miss recycled heap memory")
    if large["peak"] is None or small["peak"] is None:
        memory_row(f"{label} N{n}, forward", large["seconds"], "peak memory", None,
                   "peak RSS not measurable here (needs Linux /proc/self/clear_refs)")
        return
    growth = large["peak"] / small["peak"]
    note = (f"{large['algorithm']}; peak extra memory {_gib(large['peak'])} ({large['peak'] / GB:.2f} GB), "
            f"inputs+output {_gib(large['io'])}; at N{n // 4}: peak {_gib(small['peak'])}, "
            f"so ×{growth:.2f} for 4× N (N² would be ×16)")
    if limit_bytes is not None:
        target = f"peak < {limit_bytes / GB:g} GB"
        met = large["peak"] < limit_bytes
    else:
        target = "peak linear in N (×≤ 5 for 4× N)"
        met = growth <= 5
    memory_row(f"{label} N{n}, forward", large["seconds"], target, met, note)


def bench_long_conv(n: int, d: int = 64, state: int = 64):
    r = probe("s4d", n)
    note = "" if r["peak"] is None else (f"peak extra memory {_gib(r['peak'])} ({r['peak'] / GB:.2f} GB), "
                                         f"inputs+output {_gib(r['io'])}")
    memory_row(f"S4D layer D{d} state {state} N{n}, forward (chunked FFT)", r["seconds"], "peak < 2 GB",
               None if r["peak"] is None else r["peak"] < 2 * GB, note)


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
             "Each row runs ours and the baseline side by side in one process, alternately after a warm-up "
             "of each, and keeps each one's best time (of 3; the selective scan forward of 5, its fwd+bwd "
             "of 1). "
             "ratio = ours / baseline (lower is better).", "",
             "Rows without a baseline (ratio nan) time one forward (after a warm-up at a small N) in a "
             "fresh process, then measure the peak resident memory a second forward adds (VmHWM after "
             "clear_refs, minus VmRSS before; the output and temporaries included, the inputs not); "
             "1 GiB = 2^30 B, 1 GB = 10^9 B. "
             "'met' is computed from the numbers in the row.", "",
             "| case | ours (ms) | baseline | baseline (ms) | ratio | target | met | note |",
             "|---|---:|---|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ours'] * 1e3:.1f} | {r['baseline']} | {r['theirs'] * 1e3:.1f} | "
                     f"{r['ratio']:.2f} | {r['target']} | {r['met']} | {r['note']} |")
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
    parser.add_argument("--probe", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe_main(args.probe[0], int(args.probe[1]))
        return
    torch.manual_seed(0)
    if args.quick:
        bench_causal(1024)
        bench_window(4096)
        bench_linear(4096)
        bench_scan(1024)
        bench_long_conv(1 << 16)
        bench_long("h3", "H3 layer D64 diag_state 64 B1", 1 << 16, limit_bytes=2 * GB)
        bench_long("linear", "linear attention H4 D64", 1 << 16)
        bench_long("gla", "GLA (channel gate) H4 D64", 1 << 16)
    else:
        bench_causal(4096)
        bench_window(16384)
        bench_linear(16384)
        bench_scan(4096)
        bench_long_conv(1 << 20)
        bench_long("h3", "H3 layer D64 diag_state 64 B1", 1 << 20, limit_bytes=2 * GB)
        bench_long("linear", "linear attention H4 D64", 1 << 20)
        bench_long("gla", "GLA (channel gate) H4 D64", 1 << 20)
    write(ROWS, args.quick)


if __name__ == "__main__":
    main()
