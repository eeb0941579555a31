"""The chunked forward's extra memory grows linearly in N (SPEC §1: N·C·d + N·d², no N²):
measured as peak resident memory in a fresh process at N = 4096 and 16384."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")


def forward_case(n: int, decay: str):
    """One chunked forward, H = 4, d = 64, fp32; DECAY: none | head | channel. Measured in a
    fresh process by tests/memory_probe.py."""
    import torch.nn.functional as F

    from codegen.linear.torch_impl import linear_attention

    q, k, v = (torch.randn(1, 4, n, 64) for _ in range(3))
    kw = {}
    if decay == "head":
        kw = dict(decay=torch.tensor([0.9, 0.95, 0.99, 0.999]))
    elif decay == "channel":
        kw = dict(decay=F.logsigmoid(torch.randn(1, 4, n, 64)) / 16, log_decay=True)
    return lambda: linear_attention(q, k, v, **kw)


def test_chunked_forward_memory_is_linear_in_n(peak_memory):
    decays = ("none", "head", "channel")
    # every allocation ≥ 64 KiB from mmap: freed memory leaves the process, so the peak
    # resident size is the peak of live tensors, not of what glibc's heap happens to keep
    peaks = peak_memory(__file__, "forward_case", *((n, d) for d in decays for n in (4096, 16384)),
                        env={"MALLOC_MMAP_THRESHOLD_": "65536"}, timeout=240)
    output = 16384 * 4 * 64 * 4                       # bytes of the output at N = 16384
    for decay, small, large in zip(decays, peaks[0::2], peaks[1::2]):
        print(f"{decay}: peak extra memory N=4096 {small / 2**20:.1f} MiB, N=16384 {large / 2**20:.1f} MiB")
        assert large < 3 * output, f"{decay}: more than a few outputs' worth of memory"
        assert large < 5 * small, f"{decay}: 4x the length should cost at most about 4x the memory, not 16x"
