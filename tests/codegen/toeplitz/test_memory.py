"""chunked_fft's memory: beyond its output, O(chunk + state) per channel — independent of N —
measured by the OS (peak resident set, VmHWM, reset through /proc/self/clear_refs) in fresh
processes; the plain FFT convolution, for contrast, grows with N several times faster."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the Toeplitz runtime needs torch")

MiB = 1 << 20
D, STATE = 16, 16


def forward_case(algorithm: str, n: int, d: int, state: int):
    """One toeplitz_mix forward of an S4D kernel, fp32, batch 1, warmed up at N ≤ 8192.
    Measured in a fresh process by tests/memory_probe.py."""
    from codegen.toeplitz.kernels import init_ssm_params
    from codegen.toeplitz.torch_impl import toeplitz_mix

    g = torch.Generator().manual_seed(0)
    half = state // 2
    shapes = {"log_dt": (d,), "log_A_real": (d, half), "A_imag": (d, half), "C_re": (d, half), "C_im": (d, half)}
    params = init_ssm_params("diag", "s4d_lin", shapes, g)
    u = torch.randn(1, n, d, generator=g)

    def run(x=u):
        return toeplitz_mix(x, kind="diag", params=params, disc="zoh", algorithm=algorithm)

    return run, lambda: run(u[:, : min(n, 8192)])


def test_chunked_fft_memory_grows_like_its_output(peak_memory):
    def _peak(algorithm: str, n: int) -> int:
        return peak_memory(__file__, "forward_case", (algorithm, n, D, STATE), timeout=120)[0]

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
