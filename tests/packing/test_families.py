"""Packed rows ≡ each document run alone, for every mixer family and algorithm (forward and
gradients, fp32, relative error ≤ 1e-5), with documents of awkward lengths (1, 13, 20 next
to chunks and blocks of 8)."""

from __future__ import annotations

import pytest
import torch

from codegen import masks as M
from codegen.linear.torch_impl import linear_attention, selective_scan
from codegen.softmax import plan as P
from codegen.softmax.torch_impl import softmax_attention
from codegen.toeplitz.kernels import init_ssm_params
from codegen.toeplitz.torch_impl import toeplitz_mix
from codegen.torch import packed
from codegen.varlen import Documents

LENGTHS = [7, 20, 1, 13]
TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm().clamp_min(1e-30)).detach())


def _check(fn, *inputs: torch.Tensor, axis: int = -2) -> None:
    """fn(*pieces, docs) on the packed row against fn on each document alone: outputs and the
    gradients of a fixed random projection of the output."""
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])[None]
    docs = Documents.from_ids(ids)
    leaves = [x.clone().requires_grad_() for x in inputs]
    pieces = [list(x.split(LENGTHS, dim=axis)) for x in leaves]
    alone = torch.cat([fn(*parts, None) for parts in zip(*pieces)], dim=axis)
    weight = torch.randn_like(alone)
    ref_grads = torch.autograd.grad((alone * weight).sum(), leaves, allow_unused=True)
    leaves2 = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves2, docs)
    grads = torch.autograd.grad((out * weight).sum(), leaves2, allow_unused=True)
    assert _rel(out, alone) <= TOL, _rel(out, alone)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            assert _rel(g, r) <= TOL, _rel(g, r)


N = sum(LENGTHS)


@pytest.mark.parametrize("algorithm, mask", [
    ("materialized", "causal"), ("materialized", "causal-window5"), ("sdpa", "causal"), ("sdpa", "full"),
    ("tiled", "full"), ("tiled", "causal-window5"),
])
def test_softmax(algorithm, mask):
    m = {"causal": M.Causal(0), "full": None, "causal-window5": M.And(M.Causal(0), M.Window(5))}[mask]
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, N, 8) for _ in range(3))
    _check(lambda q, k, v, d: softmax_attention(q, k, v, m, scale=0.35, algorithm=algorithm, block=8, docs=d), q, k, v)


def test_document_tiles_skip_whole_blocks():
    """Tiles that lie across two documents are neither visited nor masked element-wise."""
    ids = Documents.from_ids(torch.tensor([[0] * 16 + [1] * 16 + [2] * 32])).ids
    g = M.And(M.Causal(0), M.Document(ids)).settled_tiles(64, 64, 8, 8)
    visited = int(g.any.sum())
    assert visited == 3 + 3 + 10          # causal tiles inside each document only (2, 2, 4 blocks)
    plan = P.make_plan(M.And(M.Causal(0), M.Document(ids)), 64, 64, 8, 8, 1, (1, 1))
    dense = P.make_plan(M.Causal(0), 64, 64, 8, 8, 1, (1, 1))
    assert plan is not None and dense is not None


@pytest.mark.parametrize("path", ["padded", "per-document", "tile-plan"])
def test_softmax_tiled_paths(path, monkeypatch):
    """The three ways the tiled softmax runs packed rows agree with the materialised mask:
    a padded batch of documents (causal masks), one call per document, the Document tile plan."""
    from codegen.softmax import torch_impl as T
    if path == "per-document":
        monkeypatch.setattr(T, "PAD_WASTE", 0.0)
    if path == "tile-plan":
        monkeypatch.setattr(T, "PAD_WASTE", 0.0)
        monkeypatch.setattr(T, "PER_DOCUMENT_CALLS", 0)
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, N, 8) for _ in range(3))
    _check(lambda q, k, v, d: softmax_attention(q, k, v, M.Causal(0), scale=0.35,
                                                algorithm="tiled" if d is not None else "materialized",
                                                block=8, docs=d), q, k, v)


def _linear_inputs(kind: str):
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, N, 6) for _ in range(3))
    g = torch.randn(1, 2, N, 6)
    return q, k, v, g


def _decay(kind: str, g):
    return {"none": {}, "head": {"decay": torch.tensor([0.9, 0.7])[:, None].squeeze(-1)},
            "token": {"decay": -torch.sigmoid(g[..., 0]), "log_decay": True},
            "channel": {"decay": -torch.sigmoid(g), "log_decay": True},
            "norm-sum": {"feature": "elu1", "norm": "sum"},
            "noncausal": {"feature": "elu1", "causal": False}}[kind]


@pytest.mark.parametrize("algorithm, kind", [
    *(("chunked", kind) for kind in ("none", "head", "token", "channel", "norm-sum", "noncausal")),
    ("quadratic", "channel"), ("quadratic", "norm-sum"), ("recurrent", "channel"), ("recurrent", "head"),
])
def test_linear(algorithm, kind):
    q, k, v, g = _linear_inputs(kind)

    def fn(q, k, v, g, d):
        return linear_attention(q, k, v, algorithm=algorithm, chunk=8, scale=0.5, docs=d, **_decay(kind, g))
    _check(fn, q, k, v, g)


def test_selective_scan():
    torch.manual_seed(2)
    u, delta = torch.randn(1, 4, N), torch.randn(1, 4, N)
    A = -torch.rand(4, 3) - 0.5
    Bm, C = torch.randn(1, 3, N), torch.randn(1, 3, N)

    def fn(u, delta, Bm, C, d):
        y = selective_scan(u.transpose(1, 2).transpose(1, 2), delta, A, Bm, C, None, True, chunk=8)
        return y if d is None else _scan_packed(u, delta, A, Bm, C, d)
    _check(fn, u, delta, Bm, C, axis=-1)


def test_channel_gates_scan_form():
    """Per-channel gates with V = 1 (Mamba's shape): the in-chunk recurrence with resets."""
    from codegen.linear.chunked import prefer_scan
    assert prefer_scan(16, 1, 16)
    torch.manual_seed(4)
    q, k, g = torch.randn(1, 3, N, 16), torch.randn(1, 3, N, 16), torch.randn(1, 3, N, 16)
    v = torch.randn(1, 3, N, 1)
    _check(lambda q, k, v, g, d: linear_attention(q, k, v, decay=-torch.sigmoid(g), log_decay=True,
                                                  algorithm="chunked", chunk=16, docs=d), q, k, v, g)


def _scan_packed(u, delta, A, Bm, C, d):
    """The selective scan over packed rows: the same call through linear_attention with docs."""
    from codegen.linear.chunked import OuterGate
    dt = torch.nn.functional.softplus(delta)
    q, k, v = C.transpose(-1, -2).unsqueeze(-3), Bm.transpose(-1, -2).unsqueeze(-3), (dt * u).unsqueeze(-1)
    return linear_attention(q, k, v, decay=OuterGate(dt, A), log_decay=True, chunk=8, docs=d).squeeze(-1)


@pytest.mark.parametrize("algorithm", ["direct", "fft", "chunked_fft", "scan"])
def test_toeplitz_ssm(algorithm):
    p = init_ssm_params("diag", "s4d_lin", {"log_dt": (4,), "log_A_real": (4, 3), "A_imag": (4, 3),
                                            "C_re": (4, 3), "C_im": (4, 3)}, torch.Generator().manual_seed(0))
    u = torch.randn(1, N, 4)
    _check(lambda u, d: toeplitz_mix(u, kind="diag", params=p, disc="zoh", algorithm=algorithm, chunk=8, docs=d), u)


@pytest.mark.parametrize("causal", [True, False])
def test_toeplitz_explicit(causal):
    K = torch.randn(N, 3)
    u = torch.randn(1, N, 3)
    _check(lambda u, d: toeplitz_mix(u, explicit_kernel=K, causal=causal, algorithm="fft", docs=d), u)


@pytest.mark.parametrize("causal", [True, False])
def test_short_convolution(causal):
    w, b = torch.randn(3, 4), torch.randn(3)
    x = torch.randn(1, N, 3)
    _check(lambda x, d: packed.conv1d_by_document(x, w, b, causal, d), x)


def test_positions_restart():
    from codegen.torch import runtime as rt
    x = torch.randn(1, 2, N, 8)
    _check(lambda x, d: packed.rotary_by_position(x, 1.0, 10000.0, d), x)
    d = Documents.from_ids(torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])[None])
    table = packed.by_position(rt.sinusoidal(N, 6), d)
    assert torch.equal(table[0, 7:27], rt.sinusoidal(20, 6))
