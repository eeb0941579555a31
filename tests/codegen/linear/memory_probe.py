"""Peak resident memory (bytes) that one chunked forward adds, in a fresh process, one line
per case:

    python memory_probe.py N:DECAY [N:DECAY ...]        (DECAY: none | head | channel)

Linux only (/proc/self/clear_refs resets the high-water mark VmHWM)."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from codegen.linear.torch_impl import linear_attention


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak(n: int, decay: str) -> int:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, n, 64) for _ in range(3))
    kw = {}
    if decay == "head":
        kw = dict(decay=torch.tensor([0.9, 0.95, 0.99, 0.999]))
    elif decay == "channel":
        kw = dict(decay=F.logsigmoid(torch.randn(1, 4, n, 64)) / 16, log_decay=True)
    with torch.no_grad():
        linear_attention(q, k, v, **kw)                 # warm up: libraries load their workspaces once
        best = None
        for _ in range(2):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status("VmRSS:")
            out = linear_attention(q, k, v, **kw)
            peak = _status("VmHWM:") - base
            del out
            best = peak if best is None else min(best, peak)
    return best


def main() -> None:
    for case in sys.argv[1:]:
        n, decay = case.split(":")
        print(peak(int(n), decay), flush=True)


if __name__ == "__main__":
    main()
