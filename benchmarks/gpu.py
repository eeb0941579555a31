"""GPU benchmarks of the generated Triton kernels against what a user would run instead.

Each row loads a reference mixer from examples/mixers with ``backend="triton"`` (the same
path as ``seqdsl.load``) and times it side by side, in this one process and on the same
inputs, with:

- ``scaled_dot_product_attention`` (FlashAttention backend) for dense causal attention;
- ``torch.compile(flex_attention)`` with the same block mask, for causal and sliding window;
- flash-linear-attention's chunk kernels (``fla.ops``) for linear attention, retention and
  GLA, when fla is installed;
- mamba's ``selective_scan_fn`` (``mamba_ssm``), when installed.

Forward and forward+backward, N from 1K to 64K (``--max-n``), fp16 (bf16 with ``--bf16``).
Writes benchmarks/results/gpu.md (the table, the device described) and gpu.png.

    python benchmarks/gpu.py                 # needs a CUDA device
    python benchmarks/gpu.py --max-n 8192    # a shorter run

Without a CUDA device it says so and exits 0 (nothing is measured; nothing is written).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import seqdsl

ROOT = Path(__file__).resolve().parents[1]
MIXERS = ROOT / "examples" / "mixers"
OUT = Path(__file__).resolve().parent / "results"
ROWS: list[dict] = []


def timed(fn, backward: bool, tensors=()) -> float:
    """Median milliseconds of ``fn`` (with a backward pass of a random gradient if asked)."""
    import triton.testing

    def run():
        out = fn()
        if backward:
            for t in tensors:
                t.grad = None
            out.backward(torch.ones_like(out))

    return float(triton.testing.do_bench(run, warmup=10, rep=50))


def add(case: str, n: int, mode: str, ours: float, baseline: str, theirs: float, flops: float | None = None) -> None:
    row = {"case": case, "N": n, "mode": mode, "ours": ours, "baseline": baseline, "theirs": theirs,
           "ratio": theirs / ours}
    if flops:
        row["tflops"] = flops / ours / 1e9
    ROWS.append(row)
    print(f"{case:32s} N={n:6d} {mode:8s} ours {ours:8.3f} ms  {baseline} {theirs:8.3f} ms  "
          f"speed ratio {theirs / ours:5.2f}")


def rand(*shape, dtype, grad=True):
    return torch.randn(*shape, device="cuda", dtype=dtype).requires_grad_(grad)


def attention(n: int, dtype) -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, h, d = 1, 16, 64
    q, k, v = (rand(b, h, n, d, dtype=dtype) for _ in range(3))
    flex = torch.compile(flex_attention)
    causal = seqdsl.load(MIXERS / "softmax_attention.seq", backend="triton", B=b, H=h, N=n, Dh=d, causal=1).cuda()
    causal_mask = create_block_mask(lambda b_, h_, i, j: j <= i, None, None, n, n)
    flops = 4 * b * h * n * n * d / 2
    for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
        ours = timed(lambda: causal(q, k, v), bwd, (q, k, v))
        sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), bwd, (q, k, v))
        fx = timed(lambda: flex(q, k, v, block_mask=causal_mask), bwd, (q, k, v))
        add("causal softmax H16 D64", n, mode, ours, "SDPA (flash)", sdpa, flops * (3.5 if bwd else 1))
        add("causal softmax H16 D64", n, mode, ours, "compiled Flex", fx)
    w = 256
    window = seqdsl.load(MIXERS / "sliding_window.seq", backend="triton", B=b, H=h, N=n, Dh=d, W=w).cuda()
    window_mask = create_block_mask(lambda b_, h_, i, j: (j <= i) & (i - j < w), None, None, n, n)
    for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
        ours = timed(lambda: window(q, k, v), bwd, (q, k, v))
        fx = timed(lambda: flex(q, k, v, block_mask=window_mask), bwd, (q, k, v))
        dense = timed(lambda: causal(q, k, v), bwd, (q, k, v))
        add(f"sliding window W{w}", n, mode, ours, "compiled Flex", fx)
        add(f"sliding window W{w}", n, mode, ours, "our dense causal", dense)


def linear(n: int, dtype) -> None:
    try:
        import fla.ops as fla_ops
    except ImportError:
        fla_ops = None
        print("flash-linear-attention is not installed: the linear rows have no baseline")
    b, h, d = 1, 8, 64
    q, k, v = (rand(b, h, n, d, dtype=dtype) for _ in range(3))
    model = seqdsl.load(MIXERS / "retention.seq", backend="triton", B=b, H=h, N=n, Dh=d).cuda()
    if fla_ops is None:
        return
    from fla.ops.simple_gla import chunk_simple_gla

    gamma = torch.log(1 - 2.0 ** (-5 - torch.arange(h, device="cuda", dtype=torch.float32)))
    g = gamma[None, None, :].expand(b, n, h).contiguous()
    for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
        ours = timed(lambda: model(q, k, v), bwd, (q, k, v))
        theirs = timed(lambda: chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g,
                                                scale=d ** -0.5)[0], bwd, (q, k, v))
        add("retention H8 D64", n, mode, ours, "fla chunk_simple_gla", theirs)


def selective_scan(n: int, dtype) -> None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        print("mamba_ssm is not installed: the selective-scan row has no baseline")
        return
    b, dm, s = 1, 1024, 16
    model = seqdsl.load(MIXERS / "selective_scan.seq", backend="triton", B=b, Dm=dm, S=s, N=n).cuda()
    u, delta = rand(b, dm, n, dtype=torch.float32), rand(b, dm, n, dtype=torch.float32)
    a = (-torch.rand(dm, s, device="cuda")).requires_grad_(True)
    bm, c = rand(b, s, n, dtype=torch.float32), rand(b, s, n, dtype=torch.float32)
    dd = rand(dm, dtype=torch.float32)
    for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
        ours = timed(lambda: model(u, delta, a, bm, c, dd), bwd, (u, delta))
        theirs = timed(lambda: selective_scan_fn(u, delta, a, bm, c, dd, delta_softplus=True), bwd, (u, delta))
        add("selective scan Dm1024 S16", n, mode, ours, "mamba selective_scan_fn", theirs)


def write(device: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["# GPU benchmarks", "", f"Device: {device}; torch {torch.__version__}.", "",
             "Median of triton.testing.do_bench, ours and the baseline side by side in one process. "
             "speed ratio = baseline time / our time (> 1: ours is faster).", "",
             "| case | N | mode | ours (ms) | baseline | baseline (ms) | speed ratio | ours TFLOP/s |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    for r in ROWS:
        tf = f"{r['tflops']:.1f}" if "tflops" in r else ""
        lines.append(f"| {r['case']} | {r['N']} | {r['mode']} | {r['ours']:.3f} | {r['baseline']} | "
                     f"{r['theirs']:.3f} | {r['ratio']:.2f} | {tf} |")
    (OUT / "gpu.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series = sorted({(r["case"], r["mode"], r["baseline"]) for r in ROWS})
    for case, mode, base in series:
        pts = [(r["N"], r["ratio"]) for r in ROWS if (r["case"], r["mode"], r["baseline"]) == (case, mode, base)]
        ax.plot(*zip(*pts), marker="o", label=f"{case} {mode} vs {base}")
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_ylabel("speed ratio (baseline / ours)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(OUT / "gpu.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-n", type=int, default=65536)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; GPU speed is unmeasured (nothing written)")
        return
    dtype = torch.bfloat16 if args.bf16 else torch.float16
    sizes = [1 << p for p in range(10, int(math.log2(args.max_n)) + 1)]
    for n in sizes:
        for bench in (attention, linear, selective_scan):
            try:
                bench(n, dtype)
            except Exception as err:  # noqa: BLE001 - a failed row is reported, the others still run
                print(f"{bench.__name__} N={n}: {type(err).__name__}: {err}")
    write(f"{torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
