"""``eps`` of the norms: y = (x − μ)/√(σ² + eps)·w + b (layernorm, batchnorm, groupnorm),
y = x/√(mean x² + eps)·w (rmsnorm), with the defaults unchanged when it is not given
(layernorm 1e-5 as torch's, rmsnorm 1e-6). Mamba's RMSNorm uses 1e-5: the difference is
visible on inputs of small scale, where eps matters."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402

SRC = "dim B = 2, N = 5, D = 6\nmodel m(x: [B, N, D]) -> [B, N, D] {\n  return NORM\n}\n"


def _run(norm: str, x):
    model = seqdsl.load(SRC.replace("NORM", norm))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.linspace(0.5, 1.5, p.numel()).reshape(p.shape))
        return model(x), [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("eps", [None, 1e-5, 0.1])
def test_rmsnorm_and_layernorm_follow_the_formula(eps):
    x = 1e-3 * torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0))   # small: eps matters
    arg = "" if eps is None else f", eps = {eps}"
    y, (w,) = _run(f"rmsnorm(x{arg})", x)
    e = 1e-6 if eps is None else eps
    ref = x / torch.sqrt(x.square().mean(-1, keepdim=True) + e) * w
    assert float((y - ref).norm() / ref.norm()) < 1e-5
    y, (w, b) = _run(f"layernorm(x{arg})", x)
    e = 1e-5 if eps is None else eps
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + e) * w + b
    assert float((y - ref).norm() / ref.norm()) < 1e-5
    y, (w, b) = _run(f"groupnorm(x, 2{arg})", x)
    g = x.reshape(2, 5, 2, 3)
    e = 1e-5 if eps is None else eps
    ref = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + e)).reshape(x.shape)
    assert float((y - (ref * w + b)).norm() / (ref * w + b).norm()) < 1e-5
