"""Print the peak resident memory (bytes) that one softmax_attention forward adds.

Run in a fresh process by test_memory.py: ``python memory_probe_softmax.py ALGORITHM N H W``
(causal sliding window of W keys, head size 64, fp32, batch 1, no grad). Peak = VmHWM after
resetting it through /proc/self/clear_refs, minus VmRSS before the call; best of two after
a warm-up (libraries allocate their workspaces once, the tiled plan is cached).
"""

from __future__ import annotations

import sys

import torch

from codegen import masks as M
from codegen.softmax.torch_impl import softmax_attention


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    algorithm, n, heads, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, 64, generator=g) for _ in range(3))
    mask = M.Causal() & M.Window(w)
    with torch.no_grad():
        softmax_attention(q, k, v, mask, scale=0.125, algorithm=algorithm)
        best = None
        for _ in range(2):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status("VmRSS:")
            out = softmax_attention(q, k, v, mask, scale=0.125, algorithm=algorithm)
            peak = _status("VmHWM:") - base
            del out
            best = peak if best is None else min(best, peak)
    print(best)


if __name__ == "__main__":
    main()
