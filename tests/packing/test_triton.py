"""The generated Triton softmax kernel over packed rows (interpreted on a CPU, tiny sizes):
documents become its cu_seqlens; equal to the torch backend's document mask, forward and
backward; the generated linear and Toeplitz kernels run per document (a batch of documents)."""

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


@pytest.mark.parametrize("name", ["gla"])
def test_triton_linear_documents_equal_torch(name):
    """The generated linear kernel runs per document (a zero state at every start)."""
    torch.manual_seed(1)
    tri = seqdsl.load(ROOT / f"examples/mixers/{name}.seq", backend="triton")
    ref = seqdsl.load(ROOT / f"examples/mixers/{name}.seq", backend="torch")
    ins = [x.requires_grad_() for x in ref.example_inputs(B=2, N=11, H=2)]
    if name == "gla":                                  # a log-gate: ≤ 0
        ins[3] = (-torch.rand_like(ins[3])).requires_grad_()
    ids = torch.tensor([[0] * 4 + [1] * 6 + [2], [4] * 11])
    out, want = tri(*ins, doc_ids=ids), ref(*ins, doc_ids=ids)
    assert float((out - want).norm() / want.norm()) <= 1e-5
    w = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad((out * w).sum(), ins), torch.autograd.grad((want * w).sum(), ins)):
        assert float((a - b).norm() / b.norm()) <= 1e-5


def test_triton_toeplitz_documents_equal_torch():
    """The generated SSM convolution kernel runs per document (no state or history enters one)."""
    torch.manual_seed(2)
    tri = seqdsl.load(ROOT / "examples/mixers/s4d.seq", backend="triton")
    ref = seqdsl.load(ROOT / "examples/mixers/s4d.seq", backend="torch")
    ins = [x.requires_grad_() for x in ref.example_inputs(B=2, N=11, D=4)]
    ids = torch.tensor([[0] * 4 + [1] * 6 + [2], [4] * 11])
    out, want = tri(*ins, doc_ids=ids), ref(*ins, doc_ids=ids)
    assert float((out - want).norm() / want.norm()) <= 1e-5
    w = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad((out * w).sum(), ins), torch.autograd.grad((want * w).sum(), ins)):
        assert float((a - b).norm() / b.norm()) <= 1e-5
