"""The tiled softmax's forward memory grows linearly in N (O(N · block)), the materialised
one quadratically — measured by the OS (peak resident set, VmHWM, reset through
/proc/self/clear_refs) in fresh processes, for a causal sliding window (H = 2, W = 256)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the softmax runtime needs torch")

PROBE = Path(__file__).with_name("memory_probe_softmax.py")
ROOT = Path(__file__).resolve().parents[3]
MiB = 1 << 20
HEADS, W = 2, 256


def _peak(algorithm: str, n: int) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           # a fixed mmap threshold: freed buffers go back to the OS, so every call's own
           # allocations show in its peak (glibc would otherwise keep the warm-up's heap)
           "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    out = subprocess.run([sys.executable, str(PROBE), algorithm, str(n), str(HEADS), str(W)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return int(out.stdout.split()[-1])


def _linux_with_clear_refs() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"peak RSS is read from /proc (Linux only); this is {sys.platform}"
    if not os.access("/proc/self/clear_refs", os.W_OK):
        return "/proc/self/clear_refs is not writable here, so the peak RSS cannot be reset"
    return None


def test_tiled_sliding_window_memory_is_linear():
    reason = _linux_with_clear_refs()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
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
