"""Sparse Sinkhorn attention against its mathematics (Tay et al. 2020; the structure of
google-research/long-range-arena lra_benchmarks/models/sinkhorn_transformer/sinkhorn_attention.py).

Per head, with the sequence cut into M blocks of Bk positions (contiguous, as in the paper):

    s_m      = Σ_{j in block m} k_j                      summed keys of block m       [M, Dh]
    R        = s W_sortᵀ                                 sort network, W_sort: [M, Dh]
    P        = rows(cols(… rows(exp R)))                 Sinkhorn balancing, `iters` row and
                                                         iters − 1 column normalisations
    K̃_m      = Σ_n P_mn K_n,  Ṽ_m = Σ_n P_mn V_n          softly sorted blocks
    Y_block m = softmax(Q_m K_mᵀ/√d) V_m + softmax(Q_m K̃_mᵀ/√d) Ṽ_m

two separately normalised attentions, summed (the LRA code's `x + sorted_x`). The module must
equal this, forward and backward (the sort network's weight included: the permutation is
soft, so it is trained), at awkward sizes (N = 60, blocks of 12, Dh = 8).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import seqdsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "examples" / "models" / "sinkhorn.seq"
SIZES = {"B": 2, "D": 16, "H": 2, "N": 60, "Bk": 12}
ITERS = 8          # the file's default


def sinkhorn(scores, iters):
    p = torch.softmax(scores, -1)
    for _ in range(iters - 1):
        p = p / p.sum(-2, keepdim=True)
        p = p / p.sum(-1, keepdim=True)
    return p


def attend(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v


def reference(q, k, v, w_sort, block, iters, joint: bool = False):
    b, h, n, d = q.shape
    m = n // block
    qb, kb, vb = (t.reshape(b, h, m, block, d) for t in (q, k, v))
    p = sinkhorn(kb.sum(3) @ w_sort.T, iters)                         # [B, H, M, M]
    ks = torch.einsum("bhmn,bhncd->bhmcd", p, kb)
    vs = torch.einsum("bhmn,bhncd->bhmcd", p, vb)
    if joint:   # one softmax over both key sets: what the test must tell apart
        y = attend(qb, torch.cat([kb, ks], -2), torch.cat([vb, vs], -2))
    else:
        y = attend(qb, kb, vb) + attend(qb, ks, vs)
    return y.reshape(b, h, n, d)


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_two_normalisations_and_soft_sorting_match_the_mathematics():
    torch.manual_seed(0)
    module = seqdsl.load(FILE, entry="sinkhorn_attention", **SIZES)
    w_sort = module.state_dict()["p.scores.weight"]
    q, k, v = (t.requires_grad_(True) for t in module.example_inputs(**SIZES))
    out = module(q, k, v)
    w = dict(module.named_parameters())["p.scores.weight"]
    ref = reference(q, k, v, w, SIZES["Bk"], ITERS)
    assert _rel(out, ref) < 1e-5
    assert _rel(reference(q, k, v, w_sort, SIZES["Bk"], ITERS, joint=True), ref) > 1e-2
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [q, k, v, w], g)
    want = torch.autograd.grad(ref, [q, k, v, w], g)
    for name, a, b in zip("q k v w_sort".split(), got, want):
        assert _rel(a, b) < 1e-4, name
    assert float(got[3].abs().sum()) > 0, "the sort network gets a gradient"


def test_the_default_rounds_balance_the_permutation():
    """At the file's default number of rounds the soft permutation is nearly doubly
    stochastic: rows sum to 1 exactly (the last normalisation), columns to within a few per
    cent for scores of unit spread (too few rounds would leave it a row softmax)."""
    iters = seqdsl.load(FILE, entry="sinkhorn_attention", **SIZES).SIZES["iters"]
    assert iters == ITERS
    torch.manual_seed(1)
    p = sinkhorn(torch.randn(2, 2, 5, 5), iters)
    assert torch.allclose(p.sum(-1), torch.ones(2, 2, 5), atol=1e-6)
    assert float((p.sum(-2) - 1).abs().max()) < 0.05
    assert float((sinkhorn(torch.randn(2, 2, 5, 5), 1).sum(-2) - 1).abs().max()) > 0.05
