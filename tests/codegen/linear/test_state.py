"""State passing: splitting a sequence at awkward points and carrying the final state into the
next call equals one call over the whole sequence (outputs, final state, and gradients that
flow back through the carried states); decoding one token at a time equals the chunked pass."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")
F = torch.nn.functional

from codegen.linear.torch_impl import ALGORITHMS, linear_attention  # noqa: E402

N = 157
SPLITS = [(0, 1, 157), (0, 37, 100, 157), (0, 63, 64, 129, 157), (0, 156, 157)]


def _inputs(decay: str | None, norm: str, dk: int = 12, dv: int = 20):
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, 3, N, dk, generator=g), torch.randn(2, 3, N, dk, generator=g)
    v = torch.randn(2, 3, N, dv, generator=g)
    if decay == "head":
        d = torch.rand(3, generator=g) * 0.2 + 0.8
    elif decay == "token":
        d = F.logsigmoid(torch.randn(2, 3, N, generator=g) + 2)
    elif decay == "channel":
        d = F.logsigmoid(torch.randn(2, 3, N, dk, generator=g) + 1) * 3
    else:
        d = None
    s0 = torch.randn(2, 3, dk, dv + (norm == "sum"), generator=g).abs() * 0.3
    return q, k, v, d, s0


def _slice_decay(d, decay, a, b):
    if decay == "token":
        return d[..., a:b]
    if decay == "channel":
        return d[..., a:b, :]
    return d


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(("decay", "norm"), [(None, "sum"), ("head", "none"), ("token", "sum"), ("channel", "none")])
def test_split_sequence_with_carried_state_equals_the_whole(decay, norm, algorithm, relerr):
    q, k, v, d, s0 = _inputs(decay, norm)
    kw = dict(feature="elu1" if norm == "sum" else "identity", norm=norm, decay=d, log_decay=decay != "head",
              algorithm=algorithm, chunk=16, return_state=True)
    leaves = [x.requires_grad_() for x in (q, k, v, s0)]
    whole, state = linear_attention(q, k, v, initial_state=s0, **kw)
    go, gs = torch.randn_like(whole), torch.randn_like(state)
    ref_grads = torch.autograd.grad((whole * go).sum() + (state * gs).sum(), leaves)
    for cuts in SPLITS:
        outs, s = [], s0
        for a, b in zip(cuts[:-1], cuts[1:]):
            kw["decay"] = _slice_decay(d, decay, a, b)
            o, s = linear_attention(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], initial_state=s, **kw)
            outs.append(o)
        o = torch.cat(outs, dim=-2)
        assert relerr(o, whole) < 1e-5 and relerr(s, state) < 1e-5, cuts
        split_grads = torch.autograd.grad((o * go).sum() + (s * gs).sum(), leaves)
        for name, a, b in zip("qkv0", split_grads, ref_grads):
            assert relerr(a, b) < 1e-5, (cuts, name)


@pytest.mark.parametrize("decay", [None, "head", "token", "channel"])
def test_decoding_token_by_token_equals_the_chunked_pass(decay, relerr):
    q, k, v, d, s0 = _inputs(decay, "sum")
    kw = dict(feature="elu1", norm="sum", log_decay=decay != "head", return_state=True)
    whole, state = linear_attention(q, k, v, decay=d, initial_state=s0, algorithm="chunked", chunk=32, **kw)
    s, outs = s0, []
    for t in range(N):
        o, s = linear_attention(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :],
                                decay=_slice_decay(d, decay, t, t + 1), initial_state=s, algorithm="recurrent", **kw)
        outs.append(o)
    assert relerr(torch.cat(outs, dim=-2), whole) < 1e-5
    assert relerr(s, state) < 1e-5


def test_non_causal_state_is_the_global_sum(relerr):
    q, k, v, _, s0 = _inputs(None, "none")
    o, s = linear_attention(q, k, v, causal=False, initial_state=s0, return_state=True)
    half = linear_attention(q, k[..., :80, :], v[..., :80, :], causal=False, initial_state=s0, return_state=True)[1]
    o2, s2 = linear_attention(q, k[..., 80:, :], v[..., 80:, :], causal=False, initial_state=half, return_state=True)
    assert relerr(o2, o) < 1e-5 and relerr(s2, s) < 1e-5
