"""Print the peak resident memory (bytes) that one toeplitz_mix forward adds.

Run in a fresh process by test_memory.py: ``python memory_probe_toeplitz.py ALGORITHM N D STATE``
(an S4D kernel, fp32, batch 1). Peak = VmHWM after resetting it through /proc/self/clear_refs,
minus VmRSS before the call; best of two after a warm-up (libraries allocate their
workspaces once).
"""

from __future__ import annotations

import sys

import torch

from codegen.toeplitz.kernels import init_ssm_params
from codegen.toeplitz.torch_impl import toeplitz_mix


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    algorithm, n, d, state = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    half = state // 2
    shapes = {"log_dt": (d,), "log_A_real": (d, half), "A_imag": (d, half), "C_re": (d, half), "C_im": (d, half)}
    params = init_ssm_params("diag", "s4d_lin", shapes, g)
    u = torch.randn(1, n, d, generator=g)
    with torch.no_grad():
        toeplitz_mix(u[:, : min(n, 8192)], kind="diag", params=params, disc="zoh", algorithm=algorithm)
        best = None
        for _ in range(2):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status("VmRSS:")
            out = toeplitz_mix(u, kind="diag", params=params, disc="zoh", algorithm=algorithm)
            peak = _status("VmHWM:") - base
            del out
            best = peak if best is None else min(best, peak)
    print(best)


if __name__ == "__main__":
    main()
