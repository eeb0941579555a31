"""The generated linear-attention Triton sections (codegen/linear/triton_gen.py), run through
Triton's interpreter on a CPU: forward, final state and every gradient against the PyTorch
runtime (quadratic / recurrent, float64) and the plain reference, at awkward sizes."""

from __future__ import annotations

import math
import os

import pytest
import torch

from codegen.linear import reference as ref
from codegen.linear import triton_gen as tg
from codegen.linear import triton_support as lx
from codegen.linear.torch_impl import linear_attention
from codegen.torch.load import load_source

pytestmark = pytest.mark.triton

HEADER = "import math\nimport torch\nimport triton\nimport triton.language as tl\nfrom codegen import masks as M\n\n"
os.environ["SEQDSL_TRITON_NAN_SCRATCH"] = "1"      # every kernel-written buffer starts as NaN


def build(name: str = "lin", **structure):
    """Generate one section, load it as a module, return (module, the entry callable)."""
    structure.setdefault("log_decay", False)
    structure.setdefault("scale", 1.0)
    text = tg.generate(name, **structure)
    mod = load_source(HEADER + text, f"test_linear_{name}")
    return mod, getattr(mod, name)


def rel(out: torch.Tensor, want: torch.Tensor) -> float:
    """‖out − want‖ / ‖want‖ (both finite, else inf)."""
    out, want = out.double(), want.double()
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - want).norm() / want.norm().clamp_min(1e-30))


def run(fn, inputs: dict, grad_names: list[str], kwargs: dict, seed: int = 0):
    """Forward (o, state) and the gradients of a random linear functional of both."""
    ins = {n: (x.detach().clone().requires_grad_(n in grad_names) if isinstance(x, torch.Tensor) else x)
           for n, x in inputs.items()}
    o, s = fn(**ins, **kwargs, return_state=True)
    g = torch.Generator().manual_seed(seed)
    wo = torch.randn(o.shape, generator=g, dtype=torch.float64)
    ws = torch.randn(s.shape, generator=g, dtype=torch.float64)
    ((o.double() * wo).sum() + (s.double() * ws).sum()).backward()
    return o.detach(), s.detach(), {n: ins[n].grad for n in grad_names}


def gates(kind: str, log: bool, shape, f: int, gen) -> torch.Tensor | float:
    """Rates a in (0, 1) (or log a) for a decay kind: head [H], token [B, H, N], channel [B, H, N, F]."""
    b, h, n = shape
    if kind == "scalar":
        return math.log(0.9) if log else 0.9
    size = {"head": (h,), "token": (b, h, n), "channel": (b, h, n, f)}[kind]
    lg = -torch.nn.functional.softplus(torch.randn(size, generator=gen) - 1.0) * 0.5
    return lg if log else lg.exp()


CASES = [
    # id, structure, (B, H, N, Dk, Dv), initial state, BLOCK_V
    ("none-elu1-sum-N63-D16", dict(feature="elu1", norm="sum", decay_kind=None, chunk=16), (1, 2, 63, 16, 24), True, 64),
    ("none-identity-N100-D24-V40-vblocks", dict(feature="identity", norm="none", decay_kind=None, chunk=32, scale=0.2),
     (1, 2, 100, 24, 40), True, 16),
    ("head-identity-retnet-N63", dict(feature="identity", norm="none", decay_kind="head", chunk=16, scale=0.25),
     (1, 2, 63, 16, 16), True, 64),
    ("scalar-relu-N100-D24", dict(feature="relu", norm="none", decay_kind="scalar", chunk=32, log_decay=True),
     (1, 2, 100, 24, 16), False, 64),
    ("token-identity-ssd-N100", dict(feature="identity", norm="none", decay_kind="token", chunk=32, log_decay=True),
     (1, 2, 100, 16, 16), True, 64),
    ("token-elu1-sum-N63-D24", dict(feature="elu1", norm="sum", decay_kind="token", chunk=16), (1, 2, 63, 24, 16),
     True, 64),
    ("channel-identity-gla-N63-D24", dict(feature="identity", norm="none", decay_kind="channel", log_decay=True,
                                          scale=24 ** -0.5), (1, 2, 63, 24, 16), True, 64),
    ("channel-relu-sum-N40", dict(feature="relu", norm="sum", decay_kind="channel", chunk=16), (1, 1, 40, 16, 24),
     True, 64),
    ("token-exp-recurrent-N40", dict(feature="exp", norm="none", decay_kind="token", algorithm="recurrent", scale=0.5),
     (1, 2, 40, 16, 24), True, 16),
    ("channel-elu1-recurrent-N33", dict(feature="elu1", norm="none", decay_kind="channel", algorithm="recurrent"),
     (1, 1, 33, 24, 8), True, 64),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_causal_matches_pytorch_and_reference(case, monkeypatch):
    _, structure, (b, h, n, dk, dv), with_h0, block_v = case
    structure = {"causal": True, "log_decay": False, "scale": 1.0, **structure}
    mod, fn = build("lin", **structure)
    monkeypatch.setattr(mod, "lin_BLOCK_V", block_v)                  # 16 with Dv 40: three value blocks
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(b, h, n, dk, generator=gen), torch.randn(b, h, n, dk, generator=gen)
    v = torch.randn(b, h, n, dv, generator=gen)
    inputs = {"q": q, "k": k, "v": v}
    grads = ["q", "k", "v"]
    if structure["decay_kind"] is not None:
        inputs["decay"] = gates(structure["decay_kind"], structure["log_decay"], (b, h, n), dk, gen)
        if isinstance(inputs["decay"], torch.Tensor):
            grads.append("decay")                                       # head: [H], broadcast over B
    extra = dv + (structure["norm"] == "sum")
    if with_h0:
        h0 = torch.randn(b, h, dk, extra, generator=gen).abs() * 0.5    # positive: a sum-norm stays away from 0
        inputs["initial_state"] = h0
        grads.append("initial_state")
    o, s, g = run(fn, inputs, grads, {})

    torch_kwargs = dict(feature=structure["feature"], norm=structure["norm"], causal=True,
                        log_decay=structure["log_decay"], scale=structure["scale"])
    dbl = {n: (x.double() if isinstance(x, torch.Tensor) else x) for n, x in inputs.items()}
    algo = "recurrent" if structure.get("algorithm") == "recurrent" else "quadratic"
    want_o, want_s, want_g = run(lambda **kw: linear_attention(**kw, algorithm=algo, **torch_kwargs), dbl, grads, {})
    assert o.dtype == v.dtype and o.shape == want_o.shape and s.shape == want_s.shape
    assert rel(o, want_o) < 1e-4, rel(o, want_o)
    assert rel(s, want_s) < 1e-4, rel(s, want_s)
    for name in grads:
        assert rel(g[name], want_g[name]) < 1e-3, (name, rel(g[name], want_g[name]))
    # the plain reference (its own feature maps and recurrence), forward and state
    r_o, r_s = ref.linear_attention_ref(**dbl, **torch_kwargs, return_state=True)
    assert rel(o, r_o) < 1e-4 and rel(s, r_s) < 1e-4


def test_split_sequence_with_carried_state_equals_whole():
    """Two calls, the second starting from the first's final state, equal one call (GLA gate)."""
    _, fn = build("split", feature="identity", norm="none", causal=True, decay_kind="channel", log_decay=True,
                  scale=0.5, chunk=16)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 50, 16, generator=gen) for _ in range(3))
    lg = gates("channel", True, (1, 2, 50), 16, gen)
    whole, s_whole = fn(q, k, v, lg, return_state=True)
    a, s_a = fn(q[..., :21, :], k[..., :21, :], v[..., :21, :], lg[..., :21, :], return_state=True)
    b, s_b = fn(q[..., 21:, :], k[..., 21:, :], v[..., 21:, :], lg[..., 21:, :], initial_state=s_a, return_state=True)
    assert rel(torch.cat([a, b], dim=-2), whole) < 1e-5
    assert rel(s_b, s_whole) < 1e-5


@pytest.mark.parametrize("feature,norm", [("elu1", "sum"), ("identity", "none")])
def test_non_causal(feature, norm):
    """o = scale·φ(Q)(S_0 + φ(K)ᵀV), with more keys than queries; grads of everything."""
    _, fn = build("glob", feature=feature, norm=norm, causal=False, decay_kind=None, scale=0.3, chunk=16)
    gen = torch.Generator().manual_seed(3)
    dv = 24 + (norm == "sum")
    inputs = {"q": torch.randn(2, 1, 37, 24, generator=gen), "k": torch.randn(2, 1, 50, 24, generator=gen),
              "v": torch.randn(2, 1, 50, 24, generator=gen),
              "initial_state": torch.randn(1, 24, dv, generator=gen).abs()}  # broadcast over the batch
    grads = ["q", "k", "v", "initial_state"]
    o, s, g = run(fn, inputs, grads, {})
    dbl = {n: x.double() for n, x in inputs.items()}
    want_o, want_s, want_g = run(lambda **kw: linear_attention(**kw, feature=feature, norm=norm, causal=False,
                                                               scale=0.3, algorithm="quadratic"), dbl, grads, {})
    assert rel(o, want_o) < 1e-4 and rel(s, want_s) < 1e-4
    for name in grads:
        assert rel(g[name], want_g[name]) < 1e-3, name


def test_favor_projection_applied_in_pytorch():
    """favor needs the projection: mapped in PyTorch, identity in the kernel; its gradient flows."""
    _, fn = build("fav", feature="favor", norm="sum", causal=True, decay_kind=None, chunk=16)
    gen = torch.Generator().manual_seed(4)
    inputs = {"q": torch.randn(1, 2, 40, 16, generator=gen) * 0.5, "k": torch.randn(1, 2, 40, 16, generator=gen) * 0.5,
              "v": torch.randn(1, 2, 40, 16, generator=gen), "projection": torch.randn(32, 16, generator=gen) * 0.5}
    grads = ["q", "k", "v", "projection"]
    o, s, g = run(fn, inputs, grads, {})
    dbl = {n: x.double() for n, x in inputs.items()}
    want_o, want_s, want_g = run(lambda **kw: linear_attention(**kw, feature="favor", norm="sum",
                                                               algorithm="quadratic"), dbl, grads, {})
    assert s.shape[-2:] == (32, 17)
    assert rel(o, want_o) < 1e-4 and rel(s, want_s) < 1e-4
    for name in grads:
        assert rel(g[name], want_g[name]) < 1e-3, name


@pytest.mark.parametrize("scan", [True, False], ids=["scan-kernel", "chunked-kernel"])
def test_selective_scan_shape(scan, monkeypatch):
    """Mamba's selective scan as the .seq example writes it (Dm heads, V = 1, keys/queries
    shared across heads, gate Δ ⊗ A) against selective_scan_ref, with grads of u, Δ, A, B, C."""
    if not scan:
        monkeypatch.setattr(lx, "SCAN_MAX_V", 0)      # force the chunked kernels (V padded to 16)
    _, fn = build("ssm", feature="identity", norm="none", causal=True, decay_kind="channel", log_decay=True)
    gen = torch.Generator().manual_seed(5)
    bsz, dm, s, n = 1, 8, 4, 64
    u, delta = torch.randn(bsz, dm, n, generator=gen), torch.randn(bsz, dm, n, generator=gen) * 0.5
    A = -torch.rand(dm, s, generator=gen) - 0.5
    Bm, C = torch.randn(bsz, s, n, generator=gen), torch.randn(bsz, s, n, generator=gen)
    D = torch.randn(dm, generator=gen)

    def mixer(u, delta, A, Bm, C, D, return_state):
        dt = torch.nn.functional.softplus(delta)
        q, k = C.transpose(-1, -2)[:, None], Bm.transpose(-1, -2)[:, None]        # [B, 1, N, S]
        v = (dt * u)[..., None]                                                    # [B, Dm, N, 1]
        gate = dt[..., None] * A[None, :, None, :]                                 # [B, Dm, N, S]
        y, h = fn(q, k, v, gate, return_state=True)
        return y[..., 0] + u * D[:, None], h[..., 0]

    args = dict(u=u, delta=delta, A=A, Bm=Bm, C=C, D=D)
    y, h, g = run(mixer, args, list(args), {})
    dbl = {n: x.double() for n, x in args.items()}
    want_y, want_h, want_g = run(lambda Bm, **kw: ref.selective_scan_ref(B=Bm, delta_softplus=True,
                                                                        **kw), dbl, list(args), {})
    assert rel(y, want_y) < 1e-4 and rel(h, want_h) < 1e-4
    for name in args:
        assert rel(g[name], want_g[name]) < 1e-3, (name, rel(g[name], want_g[name]))


def test_errors_and_support():
    assert tg.unsupported(feature="elu1", norm="sum", causal=True, decay_kind="channel") is None
    assert tg.unsupported(feature="favor", norm="none", causal=False, decay_kind=None) is None
    assert "causal" in tg.unsupported(feature="identity", norm="none", causal=False, decay_kind="token")
    assert "feature" in tg.unsupported(feature="gauss", norm="none", causal=True, decay_kind=None)
    assert "norm" in tg.unsupported(feature="identity", norm="softmax", causal=True, decay_kind=None)
    with pytest.raises(ValueError, match="causal"):
        tg.generate("bad", feature="identity", norm="none", causal=False, decay_kind="head", log_decay=False, scale=1.0)
    with pytest.raises(ValueError, match="identifier"):
        tg.generate("x; import os", feature="identity", norm="none", causal=True, decay_kind=None, log_decay=False,
                    scale=1.0)
    _, fn = build("err", feature="identity", norm="none", causal=True, decay_kind="token")
    q = torch.randn(1, 8, 16)
    with pytest.raises(ValueError, match="per-token decay"):
        fn(q, q, q, torch.rand(1, 9))
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        with pytest.raises(RuntimeError, match="CUDA device"):
            fn(q, q, q, torch.rand(1, 8))
    finally:
        os.environ["TRITON_INTERPRET"] = old if old is not None else ""


def test_generated_text_is_specialised():
    """Structure is code: the feature map, the decay and the scale appear inlined, nothing else."""
    text = tg.generate("gla", feature="elu1", norm="none", causal=True, decay_kind="channel", log_decay=True,
                       scale=0.125)
    assert "tl.where(b_qr > 0, b_qr + 1.0" in text and "* 0.125" in text and "b_G[:, None, :] - b_G[None, :, :]" in text
    plain = tg.generate("lin", feature="identity", norm="none", causal=True, decay_kind=None, log_decay=False,
                        scale=1.0)
    assert "b_G" not in plain and "tl.exp" not in plain and "* 1.0" not in plain


def test_half_inputs_and_empty_sequence():
    """fp16 inputs are computed in fp32 and o is cast back; N = 0 returns the initial state."""
    _, fn = build("half", feature="elu1", norm="sum", causal=True, decay_kind="head", chunk=16)
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 20, 16, generator=gen) for _ in range(3))
    gamma = torch.tensor([0.9, 0.7])
    o32 = fn(q, k, v, gamma)
    o16 = fn(q.half(), k.half(), v.half(), gamma)
    assert o16.dtype == torch.float16
    assert rel(o16, linear_attention(q.half(), k.half(), v.half(), feature="elu1", norm="sum", decay=gamma,
                                     algorithm="quadratic")) < 1e-3
    assert rel(o16, o32) < 2e-3
    h0 = torch.rand(2, 16, 17)
    o, s = fn(q[:, :0], k[:, :0], v[:, :0], gamma, initial_state=h0, return_state=True)
    assert o.shape == (2, 0, 16) and torch.equal(s, h0)


def test_factored_channel_gate():
    """A per-channel log-gate passed factored (chunked.OuterGate: rate ⊗ channel) equals the dense one."""
    from codegen.linear.chunked import OuterGate

    _, fn = build("outer", feature="identity", norm="none", causal=True, decay_kind="channel", log_decay=True)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 30, 16, generator=gen) for _ in range(3))
    rate, channel = torch.rand(1, 2, 30, generator=gen), -torch.rand(2, 16, generator=gen)
    dense = rate[..., None] * channel[:, None, :]
    assert rel(fn(q, k, v, OuterGate(rate, channel)), fn(q, k, v, dense)) < 1e-6
    assert rel(fn(q, k, v, dense), linear_attention(q, k, v, decay=dense, log_decay=True, algorithm="quadratic")) < 1e-4


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_strong_gates_stay_finite_and_exact(kind):
    """log a_t down to −10 per step (a chunk's cumulative gate reaches −300): every exponent the
    kernels form is a difference G_i − G_j ≤ 0, so nothing overflows; grads too."""
    _, fn = build(f"strong_{kind}", feature="identity", norm="none", causal=True, decay_kind=kind, log_decay=True,
                  chunk=32)
    gen = torch.Generator().manual_seed(8)
    shape = (1, 1, 45) if kind == "token" else (1, 1, 45, 16)
    inputs = {"q": torch.randn(1, 1, 45, 16, generator=gen), "k": torch.randn(1, 1, 45, 16, generator=gen),
              "v": torch.randn(1, 1, 45, 16, generator=gen), "decay": -10 * torch.rand(shape, generator=gen)}
    o, s, g = run(fn, inputs, list(inputs), {})
    dbl = {n: x.double() for n, x in inputs.items()}
    want_o, want_s, want_g = run(lambda **kw: linear_attention(**kw, log_decay=True, algorithm="recurrent"),
                                 dbl, list(inputs), {})
    assert rel(o, want_o) < 1e-4 and rel(s, want_s) < 1e-4
    for name in inputs:
        assert rel(g[name], want_g[name]) < 1e-3, (name, rel(g[name], want_g[name]))
