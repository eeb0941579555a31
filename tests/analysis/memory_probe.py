"""Run one hand-written algorithm and print the peak resident memory it added (bytes).

Used by test_against_torch.py in a fresh process: ``python memory_probe.py CASE N HEADS``.
Each function is the plain PyTorch form of the algorithm the cost model describes.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


def softmax_materialized(q, k, v):
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5       # G·N² scores
    p = torch.softmax(s, dim=-1)                               # G·N² probabilities
    return p @ v


def linear_chunked(q, k, v, chunk=64):
    """Causal linear attention (elu+1, normalised), chunked: the intra-chunk quadratic form
    and the d×d state at every chunk boundary (kept, as training keeps it for backward)."""
    g, n, _ = q.shape
    q, k = F.elu(q) + 1, F.elu(k) + 1
    qc, kc, vc = (t.view(g, n // chunk, chunk, -1) for t in (q, k, v))
    kv = torch.einsum("gcnk,gcnv->gckv", kc, vc)                   # per-chunk kᵀv
    states = torch.cumsum(kv, dim=1) - kv                          # the state entering each chunk
    del kv
    z = torch.cumsum(kc.sum(2), dim=1) - kc.sum(2)
    scores = torch.einsum("gcik,gcjk->gcij", qc, kc).tril_()       # [G, N/C, C, C]
    num = torch.einsum("gcij,gcjv->gciv", scores, vc) + torch.einsum("gcik,gckv->gciv", qc, states)
    den = scores.sum(-1, keepdim=True) + torch.einsum("gcik,gck->gci", qc, z)[..., None]
    return (num / den).view(g, n, -1)


def s4d_fft(u, kernel):
    n = u.shape[-2]
    uf = torch.fft.rfft(u, n=2 * n, dim=-2)
    kf = torch.fft.rfft(kernel, n=2 * n, dim=-2)
    return torch.fft.irfft(uf * kf, n=2 * n, dim=-2)[..., :n, :]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    case, n, heads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    if case == "softmax_materialized":
        fn, args = softmax_materialized, [torch.randn(1, heads, n, 64) for _ in range(3)]
    elif case == "linear_chunked":
        fn, args = linear_chunked, [torch.randn(heads, n, 64) for _ in range(3)]
    else:
        fn, args = s4d_fft, [torch.randn(1, n, 64), torch.randn(n, 64)]
    with torch.no_grad():
        fn(*args)                      # warm up: libraries load their workspaces once
        best = None
        for _ in range(2):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status("VmRSS:")
            out = fn(*args)
            peak = _status("VmHWM:") - base
            del out
            best = peak if best is None else min(best, peak)
    print(best)


if __name__ == "__main__":
    main()
