"""chunked_fft's memory: beyond its output, O(chunk + state) per channel — independent of N —
measured by the OS (peak resident set, VmHWM, reset through /proc/self/clear_refs) in fresh
processes; the plain FFT convolution, for contrast, grows with N several times faster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the Toeplitz runtime needs torch")

PROBE = Path(__file__).with_name("memory_probe_toeplitz.py")
ROOT = Path(__file__).resolve().parents[3]
MiB = 1 << 20
D, STATE = 16, 16


def _peak(algorithm: str, n: int) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(PROBE), algorithm, str(n), str(D), str(STATE)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.split()[-1])


def _linux_with_clear_refs() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"peak RSS is read from /proc (Linux only); this is {sys.platform}"
    if not os.access("/proc/self/clear_refs", os.W_OK):
        return "/proc/self/clear_refs is not writable here, so the peak RSS cannot be reset"
    return None


def test_chunked_fft_memory_grows_like_its_output():
    reason = _linux_with_clear_refs()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    small, large = 1 << 16, 1 << 18
    peaks = {n: _peak("chunked_fft", n) for n in (small, large)}
    output = {n: n * D * 4 for n in (small, large)}
    fft_large = _peak("fft", large)
    print({f"chunked_fft N={n}": f"{p / MiB:.1f} MiB (output {output[n] / MiB:.0f} MiB)" for n, p in peaks.items()},
          f"fft N={large}: {fft_large / MiB:.1f} MiB")
    # beyond the output, a working set that does not grow with N (chunk, group of chunks, state)
    for n in (small, large):
        assert peaks[n] - output[n] < 48 * MiB, (n, peaks[n] / MiB)
    # growth from N to 4N: at most linear (the output's growth plus the fixed working set)
    assert peaks[large] <= 4 * peaks[small] + 48 * MiB
    # and well below the one-FFT convolution, whose padded buffers are O(N) per channel
    assert peaks[large] < 0.6 * fft_large, (peaks[large] / MiB, fft_large / MiB)
