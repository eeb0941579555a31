"""The chunked forward's extra memory grows linearly in N (SPEC §1: N·C·d + N·d², no N²):
measured as peak resident memory in a fresh process at N = 4096 and 16384."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the linear-family runtime needs torch")

PROBE = Path(__file__).with_name("memory_probe.py")
ROOT = Path(__file__).resolve().parents[3]


def _peaks(*cases: str) -> list[int]:
    # every allocation ≥ 64 KiB from mmap: freed memory leaves the process, so the peak
    # resident size is the peak of live tensors, not of what glibc's heap happens to keep
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")   # one thread: robust on a busy machine
    out = subprocess.run([sys.executable, str(PROBE), *cases], capture_output=True, text=True, env=env,
                         timeout=240, check=True)
    return [int(line) for line in out.stdout.split()]


def test_chunked_forward_memory_is_linear_in_n():
    if not sys.platform.startswith("linux") or not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident memory")
    decays = ("none", "head", "channel")
    peaks = _peaks(*(f"{n}:{d}" for d in decays for n in (4096, 16384)))
    output = 16384 * 4 * 64 * 4                       # bytes of the output at N = 16384
    for decay, small, large in zip(decays, peaks[0::2], peaks[1::2]):
        print(f"{decay}: peak extra memory N=4096 {small / 2**20:.1f} MiB, N=16384 {large / 2**20:.1f} MiB")
        assert large < 3 * output, f"{decay}: more than a few outputs' worth of memory"
        assert large < 5 * small, f"{decay}: 4x the length should cost at most about 4x the memory, not 16x"
