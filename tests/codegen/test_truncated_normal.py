"""``truncated_normal(std)``: TensorFlow's truncated normal (values beyond ±2·std redrawn), the
initialiser of mesh-tensorflow / T5 / Switch (Switch Transformers §2.3). Checked against the
distribution's own moments: a normal of σ conditioned on |x| ≤ 2σ has standard deviation
σ·√(1 − 2·2·φ(2)/(2Φ(2) − 1)) ≈ 0.8796·σ."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the generated module needs torch")

import seqdsl  # noqa: E402


def test_the_weights_are_a_normal_truncated_at_two_sigma():
    src = ("dim B = 1, N = 2, D = 256\nmodel m(x: [B, N, D]) -> [B, N, D] {\n"
           "  return linear(x, D, bias = false, init = truncated_normal(0.05))\n}\n")
    w = seqdsl.load(src).state_dict()["linear.weight"].double()
    assert float(w.abs().max()) <= 2 * 0.05
    pdf2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))                              # P(|z| ≤ 2)
    expected = 0.05 * math.sqrt(1 - 4 * pdf2 / mass)             # ≈ 0.8796 · σ
    assert abs(float(w.std()) / expected - 1) < 0.02             # 65,536 draws: ~0.3% spread
    assert abs(float(w.mean())) < 0.05 * 0.02
