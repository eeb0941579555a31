"""``document(ids)`` written in a .seq file: checked (integer ids, a positioned error otherwise),
analysed (pairs and tiles for documents of a stated length), and honoured by every family
(softmax: a mask term; linear: state resets; Toeplitz: per-document convolution)."""

from __future__ import annotations

import pytest
import torch

import seqdsl

SOURCE = """
dim B, H, N = 64, Dh = 8

mixer packed_softmax(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh], ids: int[B, 1, N]) -> [B, H, N, Dh] {
  return mix(q, k, v, score = dot(scale = Dh ** -0.5), mask = causal() & document(ids, length = 16), norm = softmax)
}

mixer packed_linear(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh], ids: int[B, 1, N]) -> [B, H, N, Dh] {
  return mix(q, k, v, score = dot(scale = Dh ** -0.5), mask = causal() & decay(0.9) & document(ids), norm = none)
}

mixer packed_conv(u: [B, N, Dh], ids: int[B, N]) -> [B, N, Dh] {
  return mix(v = u, mask = toeplitz(ssm(diag, state = 4)) & document(ids))
}
"""
LENGTHS = [5, 1, 9]


def _ids(shape_lead: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([torch.full((n,), 10 * i + 3) for i, n in enumerate(LENGTHS)]).reshape(*shape_lead, -1)


@pytest.mark.parametrize("entry", ["packed_softmax", "packed_linear"])
def test_document_mask_in_the_file(entry):
    torch.manual_seed(0)
    m = seqdsl.load(SOURCE, entry=entry)
    q, k, v = (torch.randn(1, 2, sum(LENGTHS), 8) for _ in range(3))
    out = m(q, k, v, _ids((1, 1)))
    parts = [m(*(x[:, :, a:a + n] for x in (q, k, v)), torch.zeros(1, 1, n, dtype=torch.long))
             for a, n in zip([0, 5, 6], LENGTHS)]
    ref = torch.cat(parts, dim=-2)
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


def test_document_mask_on_a_convolution():
    m = seqdsl.load(SOURCE, entry="packed_conv")
    u = torch.randn(1, sum(LENGTHS), 8)
    out = m(u, _ids((1,)))
    ref = torch.cat([m(u[:, a:a + n], torch.zeros(1, n, dtype=torch.long)) for a, n in zip([0, 5, 6], LENGTHS)], 1)
    assert float((out - ref).norm() / ref.norm()) <= 1e-5


def test_document_ids_must_be_integers():
    bad = SOURCE.replace("ids: int[B, 1, N]) -> [B, H, N, Dh] {\n  return mix(q, k, v, score = dot(scale = Dh ** -0.5), "
                         "mask = causal() & document(ids, length", "ids: [B, 1, N]) -> [B, H, N, Dh] {\n  return mix(q, k, v, "
                         "score = dot(scale = Dh ** -0.5), mask = causal() & document(ids, length")
    with pytest.raises(seqdsl.SeqError, match=r"document\(\) needs integer document ids") as err:
        seqdsl.load(bad, entry="packed_softmax")
    assert err.value.line == 5


def test_analysis_counts_pairs_inside_documents():
    row = seqdsl.analyze(SOURCE, entry="packed_softmax", N=1024).to_dict()["layers"][0]
    flops = row["values"]["flops"]
    dense = seqdsl.analyze(SOURCE.replace(" & document(ids, length = 16)", ""), entry="packed_softmax",
                           N=1024).to_dict()["layers"][0]["values"]["flops"]
    assert flops < dense / 5           # 16-token documents: one tile of 64 per block row, not ~N/128
