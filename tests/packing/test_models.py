"""Whole models: the same documents packed into one row (``doc_ids``) and padded one per row
give the same loss and gradients (fp32, 1e-5), for a softmax, a linear-attention, an SSM and a
long-convolution model; layers that cannot keep documents apart refuse by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seqdsl
from seqdsl import SeqError

ROOT = Path(__file__).resolve().parents[2]
LENGTHS = [7, 20, 1, 13]
TOL = 1e-5


def _loss(logits: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor, pad: int) -> torch.Tensor:
    """Next-token cross-entropy summed over pairs inside one document (none across, none in
    the padding, whose id is ``pad``)."""
    same = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] != pad)
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return (nll * same).sum()


@pytest.mark.parametrize("name, sizes", [
    ("transformer_decoder", dict(D=16, H=2, L=1, F=16, V=32)),
    ("gla", dict(D=16, H=2, L=1, F=16, V=32)),
    ("mamba", dict(D=8, L=1, V=32)),
    ("hyena", dict(D=32, L=1, V=32)),          # implicit long-convolution filters over the lag axis
])
def test_packed_equals_padded(name, sizes):
    model = seqdsl.load(ROOT / "examples" / "models" / f"{name}.seq", **sizes).eval()
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 32, (n,), generator=gen) for n in LENGTHS]
    tokens, ids = seqdsl.pack(docs, 48)                              # one row, a padding document at the end
    assert tokens.shape == (1, 48)
    packed = _loss(model(tokens, doc_ids=ids), tokens, ids, pad=len(docs))
    g_packed = torch.autograd.grad(packed, list(model.parameters()))
    longest = max(LENGTHS)
    padded = torch.zeros(len(docs), longest, dtype=torch.long)
    pad_ids = torch.ones(len(docs), longest, dtype=torch.long)
    for r, d in enumerate(docs):
        padded[r, :len(d)], pad_ids[r, :len(d)] = d, 0
    ref = _loss(model(padded), padded, pad_ids, pad=1)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    assert abs(float(packed.detach() - ref.detach())) <= TOL * abs(float(ref.detach()))
    flat = torch.cat([g.flatten() for g in g_packed])
    flat_ref = torch.cat([g.flatten() for g in g_ref])
    assert float((flat - flat_ref).norm() / flat_ref.norm()) <= TOL


def test_generated_lines_say_what_honours_documents(tmp_path):
    text = seqdsl.compile(ROOT / "examples" / "models" / "mamba.seq", tmp_path, D=8, L=1, V=32).source
    assert "def forward(self, tokens, *, doc_ids=None):" in text
    assert "rt.conv1d_by_document(" in text and "docs=rt.documents())" in text


POOLED = """
dim B, N = 64, D = 8
model pooled(x: [B, N, D]) -> [B, D] {
  y = mix(rearrange(x, "b n d -> b 1 n d"), rearrange(x, "b n d -> b 1 n d"), rearrange(x, "b n d -> b 1 n d"),
          score = dot(scale = 1), mask = causal(), norm = softmax)
  return mean(rearrange(y, "b 1 n d -> b n d"), axis = 1)
}
"""


def test_a_layer_that_cannot_keep_documents_apart_refuses_by_name():
    """A mean over the sequence would mix the documents of a row: refused, naming the layer."""
    model = seqdsl.load(POOLED)
    x = torch.randn(1, 12, 8)
    model(x)                                                          # unpacked: unaffected
    with pytest.raises(SeqError, match=r"mean: cannot keep the documents of packed rows apart.*over the N axis"):
        model(x, doc_ids=torch.tensor([[0] * 5 + [1] * 7]))


def test_doc_ids_must_fit_the_input():
    model = seqdsl.load(ROOT / "examples" / "models" / "gla.seq", D=16, H=2, L=1, F=16, V=32)
    with pytest.raises(SeqError, match=r"doc_ids are \[1, 5\], the input is \[B=1, N=6\]"):
        model(torch.zeros(1, 6, dtype=torch.long), doc_ids=torch.zeros(1, 5, dtype=torch.long))


def test_cu_seqlens_through_documents():
    """FlashAttention's cu_seqlens, as Documents, give the same call as the ids."""
    from codegen.varlen import Documents
    model = seqdsl.load(ROOT / "examples" / "models" / "gla.seq", D=16, H=2, L=1, F=16, V=32)
    tokens = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(0))
    by_ids = model(tokens, doc_ids=torch.tensor([[0] * 5 + [1] * 7]))
    by_cu = model(tokens, doc_ids=Documents.from_cu_seqlens([0, 5, 12]))
    assert torch.equal(by_ids, by_cu)
