"""The generated Triton softmax kernel over packed rows (interpreted on a CPU, tiny sizes):
documents become its cu_seqlens; equal to the torch backend's document mask, forward and
backward. A generated linear kernel has no document boundaries yet: packed calls refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import seqdsl

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("triton", reason="the Triton backend needs triton")


def test_triton_softmax_documents_equal_torch():
    torch.manual_seed(0)
    tri = seqdsl.load(ROOT / "examples/mixers/softmax_attention.seq", backend="triton")
    ref = seqdsl.load(ROOT / "examples/mixers/softmax_attention.seq", backend="torch")
    q, k, v = (torch.randn(2, 2, 19, 8, requires_grad=True) for _ in range(3))
    ids = torch.tensor([[0] * 5 + [1] * 13 + [2], [4] * 19])
    out, want = tri(q, k, v, doc_ids=ids), ref(q, k, v, doc_ids=ids)
    assert float((out - want).norm() / want.norm()) <= 1e-5
    w = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((want * w).sum(), (q, k, v))):
        assert float((a - b).norm() / b.norm()) <= 1e-5


def test_triton_linear_kernel_refuses_packed_rows():
    tri = seqdsl.load(ROOT / "examples/mixers/retention.seq", backend="triton")
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(seqdsl.SeqError, match="Triton kernel, without document boundaries"):
        tri(q, q, q, doc_ids=torch.tensor([[0] * 3 + [1] * 5]))
