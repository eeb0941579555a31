"""The tiled softmax's forward memory grows linearly in N (O(N · block)), the materialised
one quadratically — measured by the OS (peak resident set, VmHWM, reset through
/proc/self/clear_refs) in fresh processes, for a causal sliding window (H = 2, W = 256)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the softmax runtime needs torch")

MiB = 1 << 20
HEADS, W = 2, 256


def forward_case(algorithm: str, n: int, heads: int, w: int):
    """One softmax_attention forward: causal sliding window of W keys, head size 64, fp32,
    batch 1. Measured in a fresh process by tests/memory_probe.py."""
    from codegen import masks as M
    from codegen.softmax.torch_impl import softmax_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, 64, generator=g) for _ in range(3))
    mask = M.Causal() & M.Window(w)
    return lambda: softmax_attention(q, k, v, mask, scale=0.125, algorithm=algorithm)


def test_tiled_sliding_window_memory_is_linear(peak_memory):
    def _peak(algorithm: str, n: int) -> int:
        # a fixed mmap threshold: freed buffers go back to the OS, so every call's own
        # allocations show in its peak (glibc would otherwise keep the warm-up's heap)
        return peak_memory(__file__, "forward_case", (algorithm, n, HEADS, W),
                           env={"MALLOC_MMAP_THRESHOLD_": str(1 << 16)})[0]

    small, large = 4096, 16384
    tiled = {n: _peak("tiled", n) for n in (small, large)}
    dense_small = _peak("materialized", small)
    output = {n: n * HEADS * 64 * 4 for n in (small, large)}
    print({f"tiled N={n}": f"{p / MiB:.1f} MiB (output {output[n] / MiB:.0f} MiB)" for n, p in tiled.items()},
          f"materialized N={small}: {dense_small / MiB:.1f} MiB")
    # 4× the length: at most ~4× the memory (plus a fixed working set), far from the 16× of N²
    assert tiled[large] <= 4 * tiled[small] + 16 * MiB, (tiled[small] / MiB, tiled[large] / MiB)
    # O(N · block): a few dozen bytes of working set per (head, query, head-dim) element at most
    assert tiled[large] < 12 * output[large] + 16 * MiB
    # the scores of the materialised path alone are H·N² floats
    assert dense_small > HEADS * small * small * 4 * 0.9
    assert tiled[small] < dense_small / 4
