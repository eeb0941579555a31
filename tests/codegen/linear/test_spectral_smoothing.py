"""``spectral(m, smoothing = s)``: the smoothed random-Fourier feature map of On Learning the
Transformer Kernel (fast_transformers' SmoothedRandomFourierFeatures, s = 1):
    φ(x) = [cos(xΩᵀ), sin(xΩᵀ), s·√m] / √m,   so   φ(q)·φ(k) = (1/m) Σ_r cos(ω_r·(q − k)) + s²,
against that formula written out, for every PyTorch algorithm (forward and gradients, N=33).
The constant keeps the normaliser φ(q)·Σφ(k) = Σ_j [(1/m)Σcos + s²] away from the zero that
the plain map reaches (the review saw 26-30% of rows ≤ 0 at init)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402

SRC = """
dim B = 2, H = 2, N = 33, Dh = 8
model m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) -> [B, H, N, Dh] {
  return mix(q, k, v, feature = spectral(16, smoothing = 1.0), mask = MASK, norm = sum ALGO)
}
"""


def _reference(q, k, v, omega, causal: bool):
    wq, wk = q @ omega.T, k @ omega.T
    kernel = (torch.cos(wq[..., :, None, :] - wk[..., None, :, :])).mean(-1) + 1.0   # (1/m)Σcos + s²
    if causal:
        kernel = kernel.tril()
    return (kernel @ v) / kernel.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal, algo", [(False, ""), (True, ", algorithm = quadratic"),
                                          (True, ", algorithm = recurrent"), (True, ", algorithm = chunked")])
def test_smoothed_spectral_attention_equals_the_formula(causal, algo):
    model = seqdsl.load(SRC.replace("MASK", "causal()" if causal else "full()").replace("ALGO", algo))
    omega = model.mix.frequencies
    q, k, v = (t.requires_grad_(True) for t in model.example_inputs())
    out = model(q, k, v)
    ref = _reference(q, k, v, omega, causal)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, omega), g)
    want = torch.autograd.grad(ref, (q, k, v, omega), g)
    for a, b in zip(got, want):
        assert float((a - b).norm() / b.norm()) < 1e-4



def test_the_triton_path_applies_the_smoothed_map():
    """The generated kernels see identity features; φ (with s) is applied before them."""
    import os
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    src = SRC.replace("MASK", "causal()").replace("ALGO", "")
    model = seqdsl.load(src, backend="triton", N=33)
    assert "spectral+1.0" in model.source and model.choices[0].backend == "triton", model.choices[0]
    q, k, v = model.example_inputs()
    out = model(q, k, v)
    ref = _reference(q, k, v, model.mix.frequencies, True)
    assert float((out - ref).norm() / ref.norm()) < 1e-4
