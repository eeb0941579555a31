"""Each family's prefill + step (codegen/<family>/step.py) against the plain references: the
outputs of a prompt and then one position at a time equal the whole sequence's, and the
state after them is the reference recurrence's (fp32 against float64 references; prompt
lengths that are not multiples of a chunk or block)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="decoding needs torch")

sys.path.insert(0, str(Path(__file__).parents[1] / "codegen" / "toeplitz"))
from toeplitz_cases import make_params, rel  # noqa: E402

from codegen import masks as M  # noqa: E402
from codegen.linear import step as linear_step  # noqa: E402
from codegen.linear.reference import linear_attention_ref  # noqa: E402
from codegen.linear.torch_impl import linear_attention  # noqa: E402
from codegen.softmax import step as softmax_step  # noqa: E402
from codegen.softmax.reference import softmax_reference  # noqa: E402
from codegen.softmax.torch_impl import softmax_attention  # noqa: E402
from codegen.toeplitz import reference as R  # noqa: E402
from codegen.toeplitz import step as toeplitz_step  # noqa: E402
from codegen.toeplitz.torch_impl import toeplitz_mix  # noqa: E402
from codegen.torch import decode_families as fam  # noqa: E402
from codegen.torch import runtime as rt  # noqa: E402
from codegen.torch.decode import DecodeState  # noqa: E402

TOL = 1e-4


def _decode(prefill, step, fn, seq_args: dict, fixed: dict, n: int, prompt: int, detail: str = "",
            per_step: dict | None = None):
    """Prefill ``prompt`` positions, then step one at a time: the outputs [.., n, C] and the
    state. ``seq_args``: tensors with the sequence on axis −2 (or −1 for 1-d-per-position
    ones, given as (tensor, axis)); ``per_step``: tensors sliced along axis 0 (kernel taps)."""
    def cut(a, b):
        out = {}
        for name, (t, axis) in seq_args.items():
            out[name] = t.narrow(axis, a, b - a)
        for name, t in (per_step or {}).items():
            out[name] = t[a:b]
        return out
    kw = {**fixed, **cut(0, prompt)}
    y, state = prefill(fn, (), kw, detail)
    ys = [y]
    for t in range(prompt, n):
        y, state = step(fn, (), {**fixed, **cut(t, t + 1)}, state, t, detail)
        ys.append(y)
    return torch.cat(ys, dim=-2), state


# ---- linear / decayed linear --------------------------------------------------------------

LINEAR = [  # (feature, norm, decay kind)
    ("identity", "none", None),
    ("elu1", "sum", None),                 # Linear Transformer: the normaliser column
    ("identity", "none", "head"),          # RetNet's γ per head
    ("identity", "none", "channel"),       # GLA's gate per key feature
]


@pytest.mark.parametrize("feature,norm,decay", LINEAR, ids=lambda c: str(c))
@pytest.mark.parametrize("prompt", [1, 37])
def test_linear_step_equals_the_recurrence(feature, norm, decay, prompt):
    g = torch.Generator().manual_seed(0)
    B, H, n, dk, dv = 2, 3, 45, 8, 5
    q, k, v = (torch.randn(B, H, n, d, generator=g) for d in (dk, dk, dv))
    seq = {"q": (q, -2), "k": (k, -2), "v": (v, -2)}
    fixed = dict(feature=feature, norm=norm, algorithm="chunked", chunk=16, scale=dk ** -0.5)
    rate = None
    if decay == "head":
        rate = torch.tensor([0.9, 0.97, 0.99])                  # [H]: one per head
        fixed.update(decay=rate, log_decay=False)
    elif decay == "channel":
        rate = torch.nn.functional.logsigmoid(torch.randn(B, H, n, dk, generator=g)) / 4
        seq["decay"] = (rate, -2)
        fixed.update(log_decay=True)
    out, state = _decode(linear_step.prefill, linear_step.step, linear_attention, seq, fixed, n, prompt)
    ref, ref_state = linear_attention_ref(q.double(), k.double(), v.double(), feature=feature, norm=norm,
                                          decay=None if rate is None else rate.double(),
                                          log_decay=fixed.get("log_decay", False), scale=dk ** -0.5,
                                          return_state=True)
    assert rel(out, ref) < TOL
    assert rel(state["S"], ref_state) < TOL


# ---- Toeplitz: SSM kernels and explicit kernels -----------------------------------------------

SSM = [("diag", "zoh", False, True), ("diag", "zoh", True, True), ("dplr", "bilinear", False, True),
       ("ema", "none", False, False), ("shift", "none", False, False)]


@pytest.mark.parametrize("case", SSM, ids=lambda c: f"{c[0]}{'-mimo' if c[2] else ''}")
@pytest.mark.parametrize("algorithm,prompt", [("fft", 1), ("chunked_fft", 21), ("scan", 37)])
def test_ssm_step_equals_the_recurrence(case, algorithm, prompt):
    kind, disc, mimo, conj = case
    if kind == "shift" and algorithm != "fft":
        algorithm = "direct"
    c, n = 6, 45
    p = {k: t.float() for k, t in make_params(kind, disc, mimo=mimo, conj=conj, channels=c, state=8, seed=3).items()}
    u = torch.randn(2, n, c, generator=torch.Generator().manual_seed(4))
    fixed = dict(kind=kind, params=p, disc=disc, conj=conj, mimo=mimo, algorithm=algorithm, chunk=8, scan_block=8)
    out, state = _decode(toeplitz_step.prefill, toeplitz_step.step, toeplitz_mix, {"v": (u, -2)}, fixed, n, prompt)
    ref, _ = R.recurrence(u.double(), kind, {k: t.double() for k, t in p.items()}, disc=disc, conj=conj, mimo=mimo)
    assert rel(out, ref) < TOL
    whole, h = toeplitz_mix(u, **{**fixed, "algorithm": "fft" if kind != "shift" else "direct"}, return_state=True)
    assert rel(state["h"], h) < TOL


@pytest.mark.parametrize("lag", [True, False], ids=["taps-over-N", "fixed-taps"])
def test_explicit_kernel_step_keeps_the_history(lag):
    """Hyena-style: with taps over N the step receives the tap of its own position and keeps
    every input (O(t) per token); a fixed kernel of L taps keeps the last L − 1 inputs."""
    g = torch.Generator().manual_seed(5)
    c, n = 4, 40
    u = torch.randn(2, n, c, generator=g)
    K = torch.randn(n if lag else 7, c, generator=g)
    fixed = dict(algorithm="fft")
    if lag:
        out, state = _decode(toeplitz_step.prefill, toeplitz_step.step, toeplitz_mix, {"v": (u, -2)}, fixed, n, 13,
                             "lag", per_step={"explicit_kernel": K})
        assert state["u"].shape == (2, n, c) and state["K"].shape == (n, c)
    else:
        out, state = _decode(toeplitz_step.prefill, toeplitz_step.step, toeplitz_mix, {"v": (u, -2)},
                             {**fixed, "explicit_kernel": K}, n, 13)
        assert state["u"].shape == (2, 6, c)
    ref = R.direct_conv(u.double(), K.double())
    assert rel(out, ref) < TOL


# ---- softmax: a KV cache, trimmed by the mask -------------------------------------------------

SOFTMAX = [
    ("causal", M.Causal(0), None, None),
    ("window", M.And(M.Causal(0), M.Window(5)), None, 4),           # the last W − 1 keys kept
    ("local", M.And(M.Causal(0), M.Local(16)), ("relative", 32), None),   # the current block (Mega-chunk)
    ("strided|butterfly", M.And(M.Causal(0), M.Or(M.Strided(4), M.Butterfly(8))), ("alibi", None), None),
]


@pytest.mark.parametrize("name,mask,bias,kept", SOFTMAX, ids=[c[0] for c in SOFTMAX])
@pytest.mark.parametrize("prompt", [1, 21])
def test_softmax_step_equals_the_whole_attention(name, mask, bias, kept, prompt):
    g = torch.Generator().manual_seed(6)
    B, H, n, d = 2, 4, 45, 8
    q, k, v = (torch.randn(B, H, n, d, generator=g) for _ in range(3))
    if bias is not None and bias[0] == "relative":
        bias = ("relative", torch.randn(H, bias[1], generator=g))
    seq = {"q": (q, -2), "k": (k, -2), "v": (v, -2)}
    fixed = dict(mask=mask, scale=d ** -0.5, bias=bias, algorithm="tiled", block=16)
    out, cache = _decode(softmax_step.prefill, softmax_step.step, softmax_attention, seq, fixed, n, prompt)
    ref = softmax_reference(q.double(), k.double(), v.double(), mask, scale=d ** -0.5, bias=bias)
    assert rel(out, ref) < TOL
    want = kept if kept is not None else (n - n // 16 * 16 if name == "local" else n)
    assert cache["k"].shape[-2] == want


@pytest.mark.parametrize("rounds", [1, 2])
def test_softmax_buckets_cache_their_ids(rounds):
    """Reformer-style: the bucket ids of every position stay in the cache with its keys, one
    set per hashing round (2: a position sees those sharing a bucket in either round)."""
    g = torch.Generator().manual_seed(7)
    B, H, n, d = 2, 2, 30, 8
    q, k, v = (torch.randn(B, H, n, d, generator=g) for _ in range(3))
    ids = [torch.randint(0, 3, (B, H, n), generator=g) for _ in range(rounds)]

    def mask(sl):
        same = M.Buckets(ids[0][..., sl])
        for more in ids[1:]:
            same = M.Or(same, M.Buckets(more[..., sl]))
        return M.And(same, M.Causal(0))
    kw = dict(scale=0.3, algorithm="tiled", block=8)
    y, cache = softmax_step.prefill(softmax_attention, (q[..., :9, :], k[..., :9, :], v[..., :9, :],
                                                        mask(slice(0, 9))), kw)
    ys = [y]
    for t in range(9, n):
        sl = slice(t, t + 1)
        y, cache = softmax_step.step(softmax_attention, (q[..., sl, :], k[..., sl, :], v[..., sl, :], mask(sl)),
                                     kw, cache, t)
        ys.append(y)
    ref = softmax_reference(q.double(), k.double(), v.double(), mask(slice(0, n)), scale=0.3)
    assert rel(torch.cat(ys, dim=-2), ref) < TOL
    assert cache["ids"].shape == (B, H, n) and (rounds == 1) == ("ids1" not in cache)


# ---- the short convolution, and the state's structure ----------------------------------------


@pytest.mark.parametrize("prompt", [1, 2, 11])
def test_conv1d_step_keeps_the_last_taps(prompt):
    g = torch.Generator().manual_seed(8)
    x, w, b = torch.randn(2, 20, 6, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    conv = rt.conv1d.__wrapped__
    out, state = _decode(fam.conv1d_prefill, fam.conv1d_step, conv, {"x": (x, -2)}, dict(weight=w, bias=b), 20, prompt)
    assert rel(out, conv(x, w, b)) < TOL
    assert torch.equal(state["x"], x[:, -3:])


def test_state_moves_selects_and_batches():
    s = DecodeState({"a.mix": {"k": torch.ones(3, 2, 5), "h": torch.ones(3, 4, dtype=torch.complex64)}}, position=7)
    assert s.nbytes == 3 * 2 * 5 * 4 + 3 * 4 * 8
    half = s.to(torch.float64)
    assert half["a.mix"]["k"].dtype == torch.float64 and half["a.mix"]["h"].dtype == torch.complex64
    assert half.position == 7
    one = s.select(1)
    assert one["a.mix"]["k"].shape == (1, 2, 5)
    both = DecodeState.cat([one, s.select(slice(0, 2))])
    assert both["a.mix"]["k"].shape == (3, 2, 5) and both.position == 7
    with pytest.raises(ValueError, match="different lengths"):
        DecodeState.cat([s, DecodeState(s, position=8)])


class _Segment(torch.nn.Module):
    """A toy segment step: y_i = x_i + Σ_{j ≤ i} x_j + memory (causal in the segment); the
    carried memory is the segment's sum."""

    def forward(self, x, memory):
        return x + x.cumsum(-2) + memory, memory + x.sum(-2, keepdim=True)


@pytest.mark.parametrize("prompt", [0, 3, 8, 13])
def test_recurrent_segments_rerun_the_segment_begun(prompt):
    """recurrent(step, x, state, segment): prefill keeps the state of the last whole segment and
    the rows begun; a step re-runs them with the new row and carries the state at a segment's end."""
    g = torch.Generator().manual_seed(9)
    x, seg, step = torch.randn(2, 24, 3, generator=g), 8, _Segment()
    rec = rt.recurrent.__wrapped__
    whole, final = rec(step, x, torch.zeros(2, 1, 3), seg)
    ys, state = [], None
    if prompt:
        (y, _), state = fam.recurrent_prefill(rec, (step, x[:, :prompt], torch.zeros(2, 1, 3), seg), {})
        ys.append(y)
    else:
        state = {"state": torch.zeros(2, 1, 3), "x": x[:, :0]}
    for t in range(prompt, 24):
        (y, _), state = fam.recurrent_step(rec, (step, x[:, t:t + 1], torch.zeros(2, 1, 3), seg), {}, state, t)
        ys.append(y)
    assert rel(torch.cat(ys, dim=-2), whole) < TOL
    assert rel(state["state"], final) < TOL and state["x"].shape[-2] == 0
