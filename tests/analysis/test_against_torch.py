"""The cost model against the world: FLOPs counted by torch, memory measured by the OS.

Until the PyTorch lowering exists, the PyTorch side is written by hand here, op for op
the same architecture as the .seq text next to it.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import sympy

import seqdsl

torch = pytest.importorskip("torch", reason="torch is needed to count FLOPs and measure memory")
F = torch.nn.functional

ENCODER = """
dim B = 2, N = 256, D = 128, H = 4, L = 2, V = 100, C = 10
dim Dh = D / H

mixer attention(x: [B, N, D]) -> [B, N, D] {
  q = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  k = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  v = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  y = mix(q, k, v, mask = full(), norm = softmax)
  return linear(rearrange(y, "b h n d -> b n (h d)"), D)
}

block layer(x: [B, N, D]) -> [B, N, D] {
  x = x + attention(layernorm(x))
  return x + mlp(layernorm(x), 4 * D)
}

model encoder(tokens: int[B, N]) -> [B, C] {
  x = embed(tokens, V, D)
  repeat L { x = layer(x) }
  return linear(mean(layernorm(x), axis = 1), C)
}
"""


class TorchEncoder(torch.nn.Module):
    """The same encoder, written by hand."""

    def __init__(self, n_layers=2, d=128, h=4, vocab=100, classes=10):
        super().__init__()
        self.h = h
        self.embed = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList()
        for _ in range(n_layers):
            self.layers.append(torch.nn.ModuleDict({
                "ln1": torch.nn.LayerNorm(d), "q": torch.nn.Linear(d, d), "k": torch.nn.Linear(d, d),
                "v": torch.nn.Linear(d, d), "o": torch.nn.Linear(d, d), "ln2": torch.nn.LayerNorm(d),
                "fc1": torch.nn.Linear(d, 4 * d), "fc2": torch.nn.Linear(4 * d, d)}))
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, classes)

    def forward(self, tokens):
        x = self.embed(tokens)
        b, n, d = x.shape
        for layer in self.layers:
            h = layer["ln1"](x)
            q, k, v = (layer[name](h).view(b, n, self.h, d // self.h).transpose(1, 2) for name in "qkv")
            # explicit products: FlopCounterMode does not count the CPU flash-attention kernel
            y = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
            x = x + layer["o"](y.transpose(1, 2).reshape(b, n, d))
            x = x + layer["fc2"](F.gelu(layer["fc1"](layer["ln2"](x))))
        return self.head(self.ln(x).mean(1))


@pytest.mark.parametrize("n", [256, 1024])
def test_matmul_flops_match_torch_flop_counter(n):
    from torch.utils.flop_counter import FlopCounterMode

    report = seqdsl.analyze(ENCODER, N=n)
    predicted = report.value(report.total.matmul_flops)
    model = TorchEncoder()
    tokens = torch.randint(0, 100, (2, n))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(tokens)
    measured = counter.get_total_flops()
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)


def test_parameter_count_matches_torch():
    report = seqdsl.analyze(ENCODER)
    assert report.value(report.total.param_count) == sum(p.numel() for p in TorchEncoder().parameters())


# ---- peak memory ------------------------------------------------------------------------
# Measured in a fresh process with glibc's mmap threshold fixed, so that every large buffer
# is its own mapping and the resident high-water mark (VmHWM, reset through clear_refs)
# shows the peak; in a long-lived process freed memory is recycled and hides it.

needs_linux = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs") or sys.platform != "linux",
                                 reason="peak memory is read from /proc (Linux only)")


# The plain PyTorch form of each algorithm the cost model describes.

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


def memory_case(case: str, n: int, heads: int):
    """The call whose peak memory tests/memory_probe.py measures in a fresh process."""
    if case == "softmax_materialized":
        fn, args = softmax_materialized, [torch.randn(1, heads, n, 64) for _ in range(3)]
    elif case == "linear_chunked":
        fn, args = linear_chunked, [torch.randn(heads, n, 64) for _ in range(3)]
    else:
        fn, args = s4d_fft, [torch.randn(1, n, 64), torch.randn(n, 64)]
    return lambda: fn(*args)


MEMORY_CASES = {
    "softmax_materialized": (
        "dim B = 1, H = 4, N = 4096, Dh = 64\n"
        "mixer m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) {\n"
        "  return mix(q, k, v, mask = full(), norm = softmax, algorithm = materialized)\n}\n"),
    "linear_chunked": (
        "dim B = 1, H = 4, N = 4096, Dh = 64\n"
        "mixer m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) {\n"
        "  return mix(q, k, v, feature = elu1, mask = causal(), norm = sum, algorithm = chunked, chunk = 64)\n}\n"),
    "s4d_fft": (
        "dim B = 1, N = 4096, D = 64\n"
        "mixer m(u: [B, N, D]) {\n"
        "  return mix(v = u, mask = toeplitz(ssm(diag, state = 64)), algorithm = fft)\n}\n"),
}


@needs_linux
@pytest.mark.parametrize("n", [4096, 16384])
@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_predicted_activation_memory_within_1_5x_of_measured(case, n, peak_memory):
    text = MEMORY_CASES[case]
    heads = 4
    if case == "softmax_materialized" and n > 4096:
        heads = 1   # 16K² scores for 4 heads would need 8.6 GB here
        text = text.replace("H = 4", "H = 1")
    report = seqdsl.analyze(text, N=n)
    mix = next(r for r in report.layers if r.op.startswith("mix/"))
    predicted = report.value(mix.estimates.activation_bytes)
    measured = peak_memory(__file__, "memory_case", (case, n, heads),
                           env={"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"})[0]
    ratio = predicted / measured
    assert 1 / 1.5 <= ratio <= 1.5, f"{case} N={n}: predicted {predicted:.3g} B, measured {measured:.3g} B"


# ---- the FlashAttention paper's IO measurement --------------------------------------------

GPT2_MEDIUM_ATTENTION = """
dim B = 1, H = 16, N = 1024, Dh = 64
mixer attention(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) {
  return mix(q, k, v, mask = full(), norm = softmax, dtype = fp16)
}
"""


def test_flashattention_io_ratio_within_2x_of_the_paper():
    """Dao et al. 2022 measured 40.3 GB of HBM traffic for standard attention and 4.4 GB for
    FlashAttention (GPT-2 medium, N=1024, d=64, 16 heads, forward + backward, A100): 9.2×.
    Constants: fp16 (2 bytes), SRAM = 192 KiB of shared memory per SM = 98 304 elements,
    tiles of B = SRAM/(4d) rows as in the paper."""
    from seqdsl.analysis.select import Machine

    a100 = Machine("a100", matmul_rate=312e12, vector_rate=19.5e12, bandwidth=1.5e12,
                   sram_bytes=192 * 1024 * 2, step_overhead=5e-6)   # sram_elements = bytes/4 → 98 304
    assert a100.sram_elements == 98304
    hbm = {}
    for algorithm in ("materialized", "tiled"):
        report = seqdsl.analyze(GPT2_MEDIUM_ATTENTION, backward=True, machine=a100,
                                algorithms={"mix": algorithm})
        hbm[algorithm] = report.value(report.total.hbm_bytes)
    ratio = hbm["materialized"] / hbm["tiled"]
    paper = 40.3 / 4.4
    assert paper / 2 <= ratio <= paper * 2, ratio
    # and the class: standard grows as N², tiled as N²d²/M
    assert math.isclose(paper, 9.16, rel_tol=0.01)


def test_symbolic_io_classes():
    report = seqdsl.analyze(GPT2_MEDIUM_ATTENTION, algorithms={"mix": "tiled"})
    hbm = report.layers[0].estimates.hbm_bytes
    n, d, sram = sympy.Symbol("N", positive=True, integer=True), sympy.Symbol("Dh", positive=True, integer=True), \
        sympy.Symbol("SRAM", positive=True)
    # leading term Θ(N² d² / M)
    lead = sympy.limit(hbm / (n ** 2 * d ** 2 / sram), n, sympy.oo)
    assert lead.is_positive and lead.is_finite
