"""codegen/torch/packing.py on small files: which lines honour documents, which refuse, by name."""

from __future__ import annotations

import torch

import seqdsl

HEAD = "dim B, N = 64, D = 8\n"


def _source(body: str, tmp_path) -> str:
    return seqdsl.compile(HEAD + body, tmp_path).source


def test_positions_added_to_the_activations_restart(tmp_path):
    src = _source('model m(x: [B, N, D]) -> [B, N, D] {\n  return x + sinusoidal(N, D)\n}\n', tmp_path)
    assert "rt.by_position(rt.sinusoidal(" in src and "rt.unpacked(" not in src


def test_positions_through_a_slice_refuse(tmp_path):
    src = _source('model m(x: [B, N, D]) -> [B, N, D] {\n  return x * cos(arange(N)[:, None])\n}\n', tmp_path)
    assert "rt.unpacked('arange', 'positions over N read by slice (slice)" in src


def test_a_filter_over_lags_keeps_its_positions(tmp_path):
    """arange(N) as the lag axis of a convolution kernel (an implicit filter) stays as it is."""
    body = ('model m(x: [B, N, D]) -> [B, N, D] {\n  param taper: [1, D] = normal(1.0)\n'
            '  h = exp(-0.5 * rearrange(arange(N), "n -> n 1")) * taper\n'
            '  return mix(v = x, mask = toeplitz(kernel(h)))\n}\n')
    src = _source(body, tmp_path)
    assert "rt.unpacked(" not in src and "rt.by_position(" not in src and "docs=rt.documents())" in src
    model = seqdsl.load(HEAD + body)
    x = torch.randn(1, 12, 8)
    out = model(x, doc_ids=torch.tensor([[0] * 5 + [1] * 7]))
    ref = torch.cat([model(x[:, :5]), model(x[:, 5:])], dim=1)
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


def test_a_mixer_over_latents_refuses(tmp_path):
    body = ('model m(x: [B, N, D]) -> [B, N, D] {\n  param lat: [4, D] = normal(0.1)\n'
            '  q = rearrange(x, "b n d -> b 1 n d")\n'
            '  kv = rearrange(lat, "l d -> 1 1 l d")\n'
            '  return rearrange(mix(q, kv, kv, score = dot(scale = 1), mask = full(), norm = softmax), '
            '"b 1 n d -> b n d")\n}\n')
    src = _source(body, tmp_path)
    assert "is not laid out [B, .., N, ..] (a mixer over another sequence)" in src
