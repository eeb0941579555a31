"""The hand-written backward of the chunked quadratic form (chunked_grad.py) against autograd
through the same blocks (fp32 vs fp32, and both against the float64 recurrence elsewhere):
dq, dk, dv, the log-gate (per head, token, channel; Mamba's factored gate), the initial state,
with and without the sum normaliser, at awkward lengths."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")
F = torch.nn.functional

from codegen.linear import chunked as chunked_mod  # noqa: E402
from codegen.linear import torch_impl  # noqa: E402
from codegen.linear.chunked import OuterGate  # noqa: E402
from codegen.linear.torch_impl import linear_attention  # noqa: E402


def _autograd_chunked(fq, fk, v, lg, kind, state, chunk):
    """The same forward with autograd through its blocks (what ran before the hand-written backward)."""
    if isinstance(lg, OuterGate):
        lg = lg.materialize()
    plan = chunked_mod._plan(fq.shape[-2], chunk, math.prod(state.shape[:-2]), fq.shape[-1], v.shape[-1], 0.0)
    return chunked_mod.run_blocks(fq, fk, v, lg, kind, state, plan, False, True)


def _inputs(kind, n, d=12, dv=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(2, 3, n, w, generator=g) for name, w in (("q", d), ("k", d), ("v", dv))}
    if kind == "head":
        x["decay"] = -0.3 * torch.rand(3, generator=g)
    elif kind == "token":
        x["decay"] = F.logsigmoid(torch.randn(2, 3, n, generator=g) + 2)
    elif kind == "channel":
        x["decay"] = F.logsigmoid(torch.randn(2, 3, n, d, generator=g) + 1)
    return x


def _grads(x, kw, chunk, seed=1):
    leaves = {k: t.clone().requires_grad_() for k, t in x.items()}
    o, s = linear_attention(**leaves, **kw, chunk=chunk, return_state=True)
    g = torch.Generator().manual_seed(seed)
    ((o * torch.randn(o.shape, generator=g)).sum() + (s * torch.randn(s.shape, generator=g)).sum()).backward()
    return (o, s), {k: t.grad for k, t in leaves.items()}


@pytest.mark.parametrize("norm", ["none", "sum"])
@pytest.mark.parametrize("n", [63, 257])
@pytest.mark.parametrize("kind", [None, "head", "token", "channel"])
def test_hand_written_backward_equals_autograd(kind, n, norm, monkeypatch, relerr):
    """Chunk 16 (N = 63, 257: a partial last chunk), several blocks of chunks."""
    x = _inputs(kind, n)
    extra = norm == "sum"
    feature = "elu1" if extra else "identity"
    x["initial_state"] = 0.3 * torch.randn(2, 3, 12, 20 + extra).abs()
    kw = dict(feature=feature, norm=norm, log_decay=kind is not None, scale=0.7)
    monkeypatch.setattr(chunked_mod, "BLOCK_BUDGET", 16 * 20 * 6)   # blocks of a few chunks
    (o, s), ours = _grads(x, kw, 16)
    monkeypatch.setattr(torch_impl, "chunked", _autograd_chunked)
    (o_ref, s_ref), ref = _grads(x, kw, 16)
    assert relerr(o, o_ref) < 1e-6 and relerr(s, s_ref) < 1e-6
    assert ours.keys() == ref.keys()
    for name in ref:
        assert relerr(ours[name], ref[name]) < 1e-4, name


def test_the_hand_written_backward_is_the_one_used():
    x = {k: t.requires_grad_() for k, t in _inputs("channel", 64).items()}
    o = linear_attention(**x, log_decay=True, chunk=16)
    assert type(o.grad_fn).__name__ != "CatBackward0"
    names, fn = set(), o.grad_fn
    while fn is not None and len(names) < 20:
        names.add(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert "_ChunkedLinearBackward" in names, names


def test_factored_gate_gradients_through_the_quadratic_form(monkeypatch, relerr):
    """Mamba's Δ ⊗ A gate, when the quadratic form is chosen (F·V large): gradients of the rate
    and of the channel factor equal autograd's."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 70, 16, generator=g) for _ in range(3))
    rate, channel = torch.rand(2, 3, 70, generator=g), -torch.rand(3, 16, generator=g)

    def run():
        leaves = [t.clone().requires_grad_() for t in (q, k, v, rate, channel)]
        o = linear_attention(*leaves[:3], decay=OuterGate(leaves[3], leaves[4]), log_decay=True, chunk=16)
        o.backward(torch.ones_like(o))
        return o, [t.grad for t in leaves]

    o, ours = run()
    monkeypatch.setattr(torch_impl, "chunked", _autograd_chunked)
    o_ref, ref = run()
    assert relerr(o, o_ref) < 1e-6
    for a, b in zip(ours, ref):
        assert relerr(a, b) < 1e-4


def test_gate_reverse_sum_is_exact_across_blocks(relerr):
    from codegen.linear.chunked_grad import _reverse_cumsum

    x = torch.randn(2, 257, 5, dtype=torch.float64)
    want = torch.flip(torch.cumsum(torch.flip(x, (-2,)), -2), (-2,))
    assert relerr(_reverse_cumsum(x), want) < 1e-12
