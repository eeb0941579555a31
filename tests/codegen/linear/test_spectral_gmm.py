"""``spectral(m, learn = gaussian, heads = H, redraw = ...)``: GMM-RKS of On Learning the
Transformer Kernel (Chowdhury et al. 2022), as the released SmoothedGaussianMixtureFourierFeatures
(cs1160701/OnLearningTheKernel, fast_transformers/feature_maps/fourier_features.py) computes it,
written out here from that code:

    x ← x · Dk^(−1/4)                      (softmax_temp = 1/√Dk, x·√temp)
    Ω_h = Σ_hᵀ ε   (ε [Dk, m] ~ N(0, I), shared by the heads; Σ_h [Dk, Dk], μ_h [Dk] learned)
    u± = x · (Ω_h ± μ_h)
    φ(x) = [cos u₊, sin u₊, cos u₋, sin u₋] · √(4/n), n = 4m, then the constant s appended

so φ(q)·φ(k) = (1/m) Σ_r [cos(ω₊ᵣ·(q−k)) + cos(ω₋ᵣ·(q−k))]·Dk^(−1/2)-scaled inputs + s²; the
attention is φ(q)·Σφ(k)v / φ(q)·Σφ(k) (norm = sum). ε is redrawn at every call (the reference's
default, ``redraw = always``), in training calls only (``training``, the reference's
deterministic_eval = True: evaluation keeps the last draw) or never.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402

SRC = """
dim B = 2, H = 2, N = 33, Dh = 8
model m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) -> [B, H, N, Dh] {
  return mix(q, k, v, feature = spectral(6, smoothing = 0.36, learn = gaussian, heads = H, redraw = REDRAW),
             mask = MASK, norm = sum ALGO)
}
"""


def source(redraw: str = "training", causal: bool = False, algo: str = "") -> str:
    return SRC.replace("REDRAW", redraw).replace("MASK", "causal()" if causal else "full()").replace("ALGO", algo)


def released_phi(x, mean, sigma, omega, smoothing: float):
    """SmoothedGaussianMixtureFourierFeatures.forward, written out (x: [B, H, N, Dk])."""
    dk, m = omega.shape
    x = x * (1 / dk ** 0.5) ** 0.5
    omega_gauss = torch.einsum("sm,hsd->hdm", omega, sigma)
    u_p = torch.einsum("nhld,hdm->nhlm", x, omega_gauss + mean.unsqueeze(-1))
    u_m = torch.einsum("nhld,hdm->nhlm", x, omega_gauss - mean.unsqueeze(-1))
    phi = torch.cat([torch.cos(u_p), torch.sin(u_p), torch.cos(u_m), torch.sin(u_m)], dim=-1) * (4 / (4 * m)) ** 0.5
    return torch.cat([phi, torch.full_like(phi[..., :1], smoothing)], dim=-1)


def reference(model, q, k, v, causal: bool):
    mix = model.mix
    fq, fk = (released_phi(t, mix.mean, mix.scale, mix.noise, 0.36) for t in (q, k))
    kernel = fq @ fk.transpose(-1, -2)
    if causal:
        kernel = kernel.tril()
    return (kernel @ v) / kernel.sum(-1, keepdim=True)


def rel(a, b) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("causal, algo", [(False, ""), (True, ", algorithm = chunked"),
                                          (True, ", algorithm = recurrent")])
def test_the_attention_is_the_released_feature_map(causal, algo):
    model = seqdsl.load(source("training", causal, algo)).eval()     # evaluation: the stored draw
    q, k, v = (t.requires_grad_(True) for t in model.example_inputs())
    out = model(q, k, v)
    ref = reference(model, q, k, v, causal)
    assert rel(out, ref) < 1e-5
    g = torch.randn_like(out)
    wrt = (q, k, v, model.mix.mean, model.mix.scale)
    for a, b in zip(torch.autograd.grad(out, wrt, g), torch.autograd.grad(ref, wrt, g)):
        assert rel(a, b) < 1e-4


def test_redraw_draws_a_new_noise_in_training_calls_only():
    model = seqdsl.load(source("training"))
    q, k, v = model.example_inputs()
    first = model.mix.noise.clone()
    a = model(q, k, v)
    drawn = model.mix.noise.clone()
    b = model(q, k, v)
    assert not torch.equal(first, drawn) and not torch.equal(drawn, model.mix.noise)
    assert rel(a, b) > 1e-3, "two training calls use two draws"
    assert rel(b, reference(model, q, k, v, False)) < 1e-5, "the buffer holds the draw the call used"
    model.eval()
    kept = model.mix.noise.clone()
    c, d = model(q, k, v), model(q, k, v)
    assert torch.equal(c, d) and torch.equal(kept, model.mix.noise), "evaluation keeps the last draw"
    torch.manual_seed(5)
    e = model.train()(q, k, v)
    torch.manual_seed(5)
    assert torch.equal(e, model(q, k, v)), "draws follow torch's global generator"


def test_always_redraws_in_evaluation_too_and_never_does_not_redraw():
    always = seqdsl.load(source("always")).eval()
    q, k, v = always.example_inputs()
    assert rel(always(q, k, v), always(q, k, v)) > 1e-3
    never = seqdsl.load(source("never"))
    init = never.mix.noise.clone()
    assert torch.equal(never(q, k, v), never(q, k, v)) and torch.equal(init, never.mix.noise)


def test_weights_and_counts(check_text):
    """μ [H, Dk] and Σ [H, Dk, Dk] train; ε [Dk, m] is a buffer; φ has 4m + 1 features."""
    model = seqdsl.load(source())
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == {"mix.mean": (2, 8), "mix.scale": (2, 8, 8)}
    assert tuple(model.mix.noise.shape) == (8, 6)
    report = seqdsl.analyze(source()).to_dict()
    assert report["total"]["values"]["param_count"] == 2 * 8 + 2 * 8 * 8
    without = seqdsl.analyze(source().replace(", heads = H", "")).to_dict()
    assert without["total"]["values"]["param_count"] == 8 + 8 * 8


def test_bad_arguments_are_positioned_errors(check_text):
    with pytest.raises(seqdsl.SeqError, match="nothing to redraw") as e:
        check_text(SRC.replace("learn = gaussian, heads = H, redraw = REDRAW", "redraw = always")
                   .replace("MASK", "full()").replace("ALGO", ""))
    assert e.value.pos.line == 4
    with pytest.raises(seqdsl.SeqError, match="heads = 3") as e:
        check_text(source().replace("heads = H", "heads = 3"))
    assert e.value.pos.line == 4


def test_the_triton_path_applies_the_gaussian_map():
    """The generated kernels see identity features; Ω and φ are computed before them."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    model = seqdsl.load(source("training", True), backend="triton").eval()
    assert "rt.gaussian_frequencies" in model.source and model.choices[0].backend == "triton", model.choices[0]
    q, k, v = model.example_inputs()
    assert rel(model(q, k, v), reference(model, q, k, v, True)) < 1e-4


def released_text_classifier() -> int:
    """text/train.py's ByteTextClassifier with mix-gauss-fourier (d_model 256, 4 layers, 4 heads
    of 64, d_ff 1024, classifier_dim 1024, 2 classes, ByteTextEncoder's 257 ids): 3,553,282."""
    d, f, heads, dh, layers, vocab, hidden, classes = 256, 1024, 4, 64, 4, 257, 1024, 2
    gmm = heads * dh + heads * dh * dh                       # mean, sigma (omega is a buffer)
    attention = 4 * d * d                                    # q, k, v, out projections, bias = False
    layer = attention + gmm + (d * f + f) + (f * d + d) + 2 * 2 * d
    head = (d * hidden + hidden) + (hidden * classes + classes)
    return vocab * d + d + layers * layer + 2 * d + head     # embedding, [CLS], layers, output norm


def test_the_example_has_the_released_parameter_count(checked_example):
    from pathlib import Path
    checked = checked_example(Path(__file__).resolve().parents[3] / "examples" / "models" / "spectral_kernel.seq")
    assert int(checked.value(checked.param_count)) == released_text_classifier() == 3_553_282


def test_decoding_refuses_a_redraw_and_runs_with_the_kept_draw():
    """A causal GMM-RKS model decodes in evaluation with redraw = training (one ε throughout);
    where a call would draw (redraw = always), prefill is refused by name."""
    src = """
dim B = 1, N = 12, V = 11, D = 8, H = 2
model m(tokens: int[B, N]) -> [B, N, D] {
  t = rearrange(embed(tokens, V, D), "b n (h d) -> b h n d", h = H)
  y = mix(t, t, t, feature = spectral(4, smoothing = 0.36, learn = gaussian, heads = H, redraw = REDRAW),
          mask = causal(), norm = sum)
  return rearrange(y, "b h n d -> b n (h d)")
}
"""
    model = seqdsl.load(src.replace("REDRAW", "training")).eval()
    tokens = torch.randint(0, 11, (1, 12))
    full = model(tokens)
    out, state = model.prefill(tokens[:, :8])
    steps = [out[:, -1]]
    for t in range(8, 11):
        out, state = model.step(tokens[:, t], state)          # [B, D]: the output at position t
        steps.append(out)
    assert rel(torch.stack(steps, 1), full[:, 7:11]) < 1e-5
    always = seqdsl.load(src.replace("REDRAW", "always")).eval()
    with pytest.raises(RuntimeError, match="redraw = always"):
        always.prefill(tokens[:, :8])
