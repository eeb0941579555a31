"""The Toeplitz family's Triton kernels (codegen/toeplitz/triton_gen.py) against the PyTorch
runtime (toeplitz_mix) and the plain references (codegen/toeplitz/reference.py): diagonal SSMs
(S4D, DSS, Mega's EMA) and DPLR ones (S4) chunked with state passing, shift SSMs, fused gates, carried states,
the bidirectional form, MIMO (S5) and explicit kernels (Hyena's long convolutions). Forward and gradients, fp32, through TRITON_INTERPRET=1 on a CPU
(tests/conftest.py sets it); chunk 32 so that N = 63 / 100 / 200 cross chunk boundaries."""

from __future__ import annotations

import os

import pytest
import torch

from codegen.toeplitz import reference as ref
from codegen.toeplitz import triton_gen as tg
from codegen.toeplitz import triton_support as tzs
from codegen.toeplitz.kernels import init_ssm_params
from codegen.toeplitz.torch_impl import toeplitz_mix
from codegen.torch.load import load_source

pytestmark = pytest.mark.triton

HEADER = ("import math\nimport torch\nimport triton\nimport triton.language as tl\n"
          "from codegen import masks as M\n")

os.environ["SEQDSL_TRITON_NAN_SCRATCH"] = "1"     # every kernel output buffer starts as NaN
tzs.NAN_SCRATCH = True

KIND = {   # name → (kind, disc, conj, init, parameter shapes for C channels and M modes)
    "s4d": ("diag", "zoh", True, "s4d_lin"),
    "dss": ("diag", "dss", True, "dss"),
    "ema": ("ema", None, True, "random"),
    "shift": ("shift", None, True, "random"),
    "s4": ("dplr", "zoh", True, "legs"),
    "s4-bilinear": ("dplr", "bilinear", False, "legs"),
}


def shapes(kind: str, C: int, M: int, disc: str | None = None, conj: bool = True) -> dict[str, tuple[int, ...]]:
    if kind == "dplr":                   # what the checker gives a DPLR mixer (P, B shared by the channels)
        from seqdsl.check.builtins_mix import _ssm_shapes
        return {k: tuple(int(d) for d in v) for k, v in _ssm_shapes(kind, M, C, False, conj, disc).items()}
    if kind == "shift":
        return {"C_re": (C, M)}
    if kind == "ema":
        return {n: (C, M) for n in ("alpha", "delta", "beta", "C_re")}
    return {"log_dt": (C,), **{n: (C, M) for n in ("log_A_real", "A_imag", "C_re", "C_im")}}


def make_params(name: str, C: int, M: int, seed: int = 0, grad: bool = True) -> dict[str, torch.Tensor]:
    kind, disc, conj, init = KIND[name]
    g = torch.Generator().manual_seed(seed)
    p = init_ssm_params(kind, init, shapes(kind, C, M, disc, conj), g)
    return {k: t.requires_grad_(grad) for k, t in p.items()}


_CACHE: dict[tuple, object] = {}


def _section(section: str, tag: str, *, causal: bool, chunk: int, pre: bool, skip: bool, post: bool, **structure):
    """The generated section ``section`` for a structure, loaded once as a module."""
    key = (tag, causal, chunk, pre, skip, post)
    if key not in _CACHE:
        text = tg.generate(section, causal=causal, chunk=chunk, pre=pre, skip=skip, post=post, **structure)
        stem = f"toeplitz_{tag}_{'c' if causal else 'b'}{chunk}{int(pre)}{int(skip)}{int(post)}"
        _CACHE[key] = load_source(HEADER + text, stem)
    return _CACHE[key]


def build(name: str, *, causal: bool = True, chunk: int = 32, pre=False, skip=False, post=False):
    """The generated section for a kind, loaded as a module; returns its callable."""
    kind, disc, conj, _ = KIND[name]
    return _section("tz_mix", name, causal=causal, chunk=chunk, pre=pre, skip=skip, post=post, kind=kind, disc=disc,
                    conj=conj, mimo=False, explicit=False).tz_mix


def torch_mix(name: str, v, params, **kw):
    kind, disc, conj, _ = KIND[name]
    return toeplitz_mix(v, kind=kind, params=params, disc=disc, conj=conj, **kw)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in double precision (complex states included)."""
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.to(wide), b.to(wide)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def grads(out, inputs):
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
    return torch.autograd.grad(out, inputs, g, allow_unused=True)


# ---- forward and gradients, every kind -------------------------------------------------------


CASES = [("s4d", 2, 63, 5, 8), ("s4d", 1, 200, 3, 4), ("dss", 2, 100, 4, 8), ("ema", 2, 100, 6, 4),
         ("shift", 2, 100, 40, 4), ("s4", 2, 100, 3, 4), ("s4-bilinear", 1, 63, 2, 16)]


@pytest.mark.parametrize("name,B,N,C,M", CASES, ids=[f"{c[0]}-B{c[1]}-N{c[2]}-C{c[3]}-M{c[4]}" for c in CASES])
def test_forward_and_grads_match_torch(name, B, N, C, M):
    params = make_params(name, C, M)
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = build(name)(v, params)
    y_ref = torch_mix(name, v, params, algorithm="fft")
    assert y.shape == y_ref.shape and torch.isfinite(y).all()
    assert rel(y, y_ref) < 1e-4
    inputs = [v, *params.values()]
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), ["v", *params]):
        assert rel(got, want) < 1e-3, what


@pytest.mark.parametrize("name", ["s4d", "ema", "shift", "s4"])
def test_forward_matches_plain_recurrence(name):
    """The literal recurrence of reference.py (float64, dense system) agrees with the kernel."""
    B, N, C, M = 2, 63, 3, 4
    params = make_params(name, C, M, grad=False)
    kind, disc, conj, _ = KIND[name]
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(2))
    y = build(name)(v, params)
    y_ref, _ = ref.recurrence(v.double(), kind, {k: t.double() for k, t in params.items()}, disc=disc, conj=conj)
    assert rel(y, y_ref) < 1e-4


# ---- states ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s4d", "ema", "shift", "s4"])
def test_split_sequence_with_carried_state_equals_whole(name):
    B, N, C, M = 2, 100, 4, 4
    params = make_params(name, C, M, grad=False)
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(3))
    mix = build(name)
    y, h = mix(v, params, return_state=True)
    y1, h1 = mix(v[:, :37], params, return_state=True)
    y2, h2 = mix(v[:, 37:], params, initial_state=h1, return_state=True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-5
    assert rel(h2, h) < 1e-5
    _, h_ref = torch_mix(name, v, params, algorithm="direct", return_state=True)
    assert h.shape == h_ref.shape and rel(h, h_ref) < 1e-4


@pytest.mark.parametrize("name", ["s4d", "ema", "shift", "s4"])
def test_state_gradients_match_torch(name):
    """Initial state in, final state out: gradients of v, the parameters and h0 through both."""
    B, N, C, M = 2, 63, 3, 4
    params = make_params(name, C, M)
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(4), requires_grad=True)
    _, h0 = torch_mix(name, torch.randn(B, 20, C, generator=torch.Generator().manual_seed(5)),
                      {k: t.detach() for k, t in params.items()}, algorithm="direct", return_state=True)
    h0 = h0.detach().requires_grad_()
    y, h = build(name)(v, params, initial_state=h0, return_state=True)
    y_ref, h_ref = torch_mix(name, v, params, algorithm="direct", initial_state=h0, return_state=True)
    assert rel(y, y_ref) < 1e-4 and rel(h, h_ref) < 1e-4
    gh = torch.randn(h.shape, dtype=h.dtype, generator=torch.Generator().manual_seed(6))
    inputs = [v, h0, *params.values()]

    def loss(yy, hh):
        return (yy * torch.linspace(-1, 1, N)[:, None]).sum() + (hh * gh.conj()).real.sum()

    got = torch.autograd.grad(loss(y, h), inputs, allow_unused=True)
    want = torch.autograd.grad(loss(y_ref, h_ref), inputs, allow_unused=True)
    for g, w, what in zip(got, want, ["v", "h0", *params]):
        assert rel(g, w) < 1e-3, what


# ---- gates and compositions --------------------------------------------------------------------


def test_h3_composition_with_fused_gates():
    """H3's y = q ⊙ (ssm(k ⊙ v) + D ⊙ k ⊙ v) through pre = k, skip = D, post = q equals the
    unfused PyTorch expression, values and gradients (q, k, v, D, parameters)."""
    B, N, C, M = 2, 100, 5, 8
    g = torch.Generator().manual_seed(8)
    params = make_params("s4d", C, M)
    q, k, v = (torch.randn(B, N, C, generator=g, requires_grad=True) for _ in range(3))
    D = torch.randn(C, generator=g, requires_grad=True)
    y = build("s4d", pre=True, skip=True, post=True)(v, params, pre=k, skip=D, post=q)
    kv = k * v
    y_ref = q * (torch_mix("s4d", kv, params, algorithm="fft") + D * kv)
    assert rel(y, y_ref) < 1e-4
    inputs = [q, k, v, D, *params.values()]
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), ["q", "k", "v", "D", *params]):
        assert rel(got, want) < 1e-3, what


def test_shift_gates_broadcast_post():
    """A shift SSM with a pre gate and a post gate that broadcasts over the batch ([N, C])."""
    B, N, C, S = 2, 63, 24, 4
    g = torch.Generator().manual_seed(9)
    params = make_params("shift", C, S)
    v, k = (torch.randn(B, N, C, generator=g, requires_grad=True) for _ in range(2))
    q = torch.randn(N, C, generator=g, requires_grad=True)
    y = build("shift", pre=True, post=True)(v, params, pre=k, post=q)
    y_ref = q * torch_mix("shift", k * v, params, algorithm="direct")
    assert rel(y, y_ref) < 1e-4
    inputs = [v, k, q, *params.values()]
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), ["v", "k", "q", *params]):
        assert rel(got, want) < 1e-3, what


@pytest.mark.parametrize("name", ["s4d", "shift", "s4"])
def test_bidirectional(name):
    B, N, C, M = 2, 63, 3, 4
    params, rparams = make_params(name, C, M, seed=0), make_params(name, C, M, seed=1)
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(10), requires_grad=True)
    y = build(name, causal=False)(v, params, rparams)
    y_ref = torch_mix(name, v, params, reverse_params=rparams, causal=False, algorithm="direct")
    assert rel(y, y_ref) < 1e-4
    inputs = [v, *params.values(), *rparams.values()]
    for got, want in zip(grads(y, inputs), grads(y_ref, inputs)):
        assert rel(got, want) < 1e-3
    frozen = {k: t.detach() for k, t in params.items()}          # gradients for the reverse SSM only
    y = build(name, causal=False)(v, frozen, rparams)
    y_ref = torch_mix(name, v, frozen, reverse_params=rparams, causal=False, algorithm="direct")
    for got, want in zip(grads(y, list(rparams.values())), grads(y_ref, list(rparams.values()))):
        assert rel(got, want) < 1e-3


def test_leading_dims_and_multi_chunk_batches():
    """v [2, 3, N, C] (flattened to 6 batch rows) and a chunk of 16: many chunks, one batch block."""
    params = make_params("ema", 4, 4, grad=False)
    v = torch.randn(2, 3, 40, 4, generator=torch.Generator().manual_seed(11))
    y = build("ema", chunk=16)(v, params)
    assert y.shape == v.shape
    assert rel(y, torch_mix("ema", v, params, algorithm="direct")) < 1e-4


# ---- the generator's contract -----------------------------------------------------------------


def test_unsupported_reasons():
    base = dict(disc="zoh", conj=True, mimo=False, causal=True, explicit=False)
    assert tg.unsupported(kind="diag", **base) is None
    assert tg.unsupported(kind="ema", **{**base, "disc": None}) is None
    assert tg.unsupported(kind="shift", **{**base, "causal": False}) is None
    assert tg.unsupported(kind="dplr", **base) is None
    assert "DPLR" in tg.unsupported(kind="dplr", **{**base, "disc": "dss"})
    assert tg.unsupported(kind="diag", **{**base, "mimo": True}) is None
    assert tg.unsupported(kind="diag", **{**base, "mimo": True, "causal": False}) is None
    assert "MIMO" in tg.unsupported(kind="ema", **{**base, "mimo": True})
    assert tg.unsupported(kind=None, **{**base, "explicit": True}) is None
    assert tg.unsupported(kind=None, **{**base, "explicit": True, "causal": False}) is None
    assert "MIMO" in tg.unsupported(kind=None, **{**base, "explicit": True, "mimo": True})
    assert "O(N·L)" in tg.EXPLICIT_COST and "O(N log N)" in tg.EXPLICIT_COST
    with pytest.raises(ValueError, match="DPLR"):
        tg.generate("x", kind="dplr", **{**base, "disc": "dss"})


def test_generated_text_is_specialised_and_named():
    text = tg.generate("h3_diag", kind="diag", disc="zoh", conj=True, mimo=False, causal=True, explicit=False,
                       pre=True, skip=True, post=True)
    ema = tg.generate("mega_ema", kind="ema", disc=None, conj=True, mimo=False, causal=True, explicit=False)
    compile(text, "gen", "exec")
    compile(ema, "gen", "exec")
    assert "def h3_diag_kernel(" in text and "def h3_diag(" in text
    assert "# [" not in text and "# [" not in ema               # structure tags resolved
    assert "b_zi" in text and "b_zi" not in ema                 # EMA's modes are real: no imaginary parts
    for line in text.splitlines():                              # every module-level name carries the prefix
        if line.startswith(("import ", "from ")):               # (imports are function-local, but for
            assert line == "from codegen.triton import tuning as tt", line   # the autotune decorator's)
        if line.startswith(("def ", "class ")):
            assert line.split()[1].startswith("h3_diag"), line
        elif line and not line[0].isspace() and "=" in line and not line.startswith(("#", "@")):
            assert line.startswith("h3_diag"), line
    with pytest.raises(ValueError):
        tg.generate("bad name", kind="diag", disc="zoh", conj=True, mimo=False, causal=True, explicit=False)


def test_gate_mismatch_and_cpu_without_interpreter(monkeypatch):
    params = make_params("ema", 2, 4, grad=False)
    v = torch.randn(1, 20, 2)
    with pytest.raises(ValueError, match="gates"):
        build("ema")(v, params, pre=v)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA device"):
        build("ema")(v, params)


# ---- MIMO diagonal SSMs (S5) -------------------------------------------------------------------


def mimo_params(C: int, M: int, seed: int = 0, grad: bool = True) -> dict[str, torch.Tensor]:
    """S5's parameters (legs init, zoh, conjugate pairs): one state of M modes, B̄ [M, C], C [C, M]."""
    sh = {"log_dt": (M,), "log_A_real": (M,), "A_imag": (M,), "B_re": (M, C), "B_im": (M, C),
          "C_re": (C, M), "C_im": (C, M)}
    p = init_ssm_params("diag", "legs", sh, torch.Generator().manual_seed(seed))
    return {k: t.requires_grad_(grad) for k, t in p.items()}


def build_mimo(*, causal: bool = True, chunk: int = 32, pre=False, skip=False, post=False, mode_block: int = 64):
    mod = _section("s5_mix", f"mimo{mode_block}", causal=causal, chunk=chunk, pre=pre, skip=skip, post=post,
                   kind="diag", disc="zoh", conj=True, mimo=True, explicit=False)
    mod.s5_mix_MODE_BLOCK = mode_block            # fewer modes per program: several blocks, summed
    return mod.s5_mix


def mimo_torch(v, params, **kw):
    return toeplitz_mix(v, kind="diag", params=params, disc="zoh", conj=True, mimo=True, algorithm="scan",
                        scan_block=16, **kw)


MIMO_CASES = [(2, 63, 5, 6, 64), (1, 100, 24, 20, 16)]     # the last: two blocks of modes (20 > 16)


@pytest.mark.parametrize("B,N,C,M,mb", MIMO_CASES, ids=[f"B{c[0]}-N{c[1]}-C{c[2]}-M{c[3]}-blk{c[4]}" for c in MIMO_CASES])
def test_mimo_forward_and_grads_match_torch_and_reference(B, N, C, M, mb):
    params = mimo_params(C, M)
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(12), requires_grad=True)
    y = build_mimo(mode_block=mb)(v, params)
    y_ref = mimo_torch(v, params)
    assert y.shape == y_ref.shape and torch.isfinite(y).all()
    assert rel(y, y_ref) < 1e-4
    y_rec, _ = ref.recurrence(v.detach().double(), "diag", {k: t.detach().double() for k, t in params.items()},
                              disc="zoh", conj=True, mimo=True)
    assert rel(y, y_rec) < 1e-4
    inputs = [v, *params.values()]
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), ["v", *params]):
        assert rel(got, want) < 1e-3, what


def test_mimo_fused_gates():
    """S5 with u = k ⊙ v, y = q ⊙ (ssm(u) + D ⊙ u): values and gradients of q, k, v, D, parameters."""
    B, N, C, M = 2, 63, 5, 4
    g = torch.Generator().manual_seed(13)
    params = mimo_params(C, M)
    q, k, v = (torch.randn(B, N, C, generator=g, requires_grad=True) for _ in range(3))
    D = torch.randn(C, generator=g, requires_grad=True)
    y = build_mimo(pre=True, skip=True, post=True)(v, params, pre=k, skip=D, post=q)
    kv = k * v
    y_ref = q * (mimo_torch(kv, params) + D * kv)
    assert rel(y, y_ref) < 1e-4
    inputs = [q, k, v, D, *params.values()]
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), ["q", "k", "v", "D", *params]):
        assert rel(got, want) < 1e-3, what


def test_mimo_states_split_and_gradients():
    """Carried state: a split sequence equals the whole; gradients through h0 and h_N."""
    B, N, C, M = 2, 63, 3, 4
    params = mimo_params(C, M)
    frozen = {k: t.detach() for k, t in params.items()}
    mix = build_mimo()
    v = torch.randn(B, N, C, generator=torch.Generator().manual_seed(14), requires_grad=True)
    y, h = mix(v.detach(), frozen, return_state=True)
    y1, h1 = mix(v.detach()[:, :37], frozen, return_state=True)
    y2, h2 = mix(v.detach()[:, 37:], frozen, initial_state=h1, return_state=True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-5 and rel(h2, h) < 1e-5
    _, h0 = mimo_torch(torch.randn(B, 20, C, generator=torch.Generator().manual_seed(15)), frozen, return_state=True)
    h0 = h0.detach().requires_grad_()
    y, h = mix(v, params, initial_state=h0, return_state=True)
    y_ref, h_ref = mimo_torch(v, params, initial_state=h0, return_state=True)
    assert h.shape == h_ref.shape and rel(y, y_ref) < 1e-4 and rel(h, h_ref) < 1e-4
    gh = torch.randn(h.shape, dtype=h.dtype, generator=torch.Generator().manual_seed(16))
    inputs = [v, h0, *params.values()]

    def loss(yy, hh):
        return (yy * torch.linspace(-1, 1, N)[:, None]).sum() + (hh * gh.conj()).real.sum()

    got = torch.autograd.grad(loss(y, h), inputs, allow_unused=True)
    want = torch.autograd.grad(loss(y_ref, h_ref), inputs, allow_unused=True)
    for a, b, what in zip(got, want, ["v", "h0", *params]):
        assert rel(a, b) < 1e-3, what


def test_mimo_bidirectional_with_skip():
    """S5 as examples/models/s5.seq uses it: bidirectional (a second SSM read backwards, its
    [C, C] tap 0 taken out) with the skip fused, vs toeplitz_mix and the plain Toeplitz product."""
    B, N, C, M = 2, 100, 4, 4
    params, rparams = mimo_params(C, M, seed=0), mimo_params(C, M, seed=1)
    g = torch.Generator().manual_seed(17)
    v = torch.randn(B, N, C, generator=g, requires_grad=True)
    D = torch.randn(C, generator=g, requires_grad=True)
    y = build_mimo(causal=False, skip=True)(v, params, rparams, skip=D)
    y_ref = mimo_torch(v, params, reverse_params=rparams, causal=False) + D * v
    assert rel(y, y_ref) < 1e-4
    from codegen.toeplitz.kernels import ssm_kernel
    K, Kr = (ssm_kernel("diag", {k: t.detach().double() for k, t in p.items()}, N, disc="zoh", mimo=True)
             for p in (params, rparams))
    y_plain = ref.direct_conv(v.detach().double(), K, K_rev=Kr) + D.detach().double() * v.detach().double()
    assert rel(y, y_plain) < 1e-4
    inputs = [v, D, *params.values(), *rparams.values()]
    for got, want in zip(grads(y, inputs), grads(y_ref, inputs)):
        assert rel(got, want) < 1e-3


def test_mimo_generated_text_is_specialised_and_named():
    text = tg.generate("s5_ssm", kind="diag", disc="zoh", conj=True, mimo=True, causal=False, explicit=False, skip=True)
    compile(text, "gen", "exec")
    assert "def s5_ssm_kernel(" in text and "def s5_ssm(" in text and "tl.associative_scan" in text
    assert "# [" not in text                                        # structure tags resolved
    assert "MIMOMix.apply(s5_ssm_launch, True" in text and "return y, hN.reshape" not in text   # bidirectional only
    for line in text.splitlines():
        if line.startswith(("def ", "class ")):
            assert line.split()[1].startswith("s5_ssm"), line
        elif line and not line[0].isspace() and "=" in line and not line.startswith(("#", "@")):
            assert line.startswith("s5_ssm"), line
    with pytest.raises(ValueError, match="bidirectional"):          # no state for a bidirectional mix
        params = mimo_params(3, 4, grad=False)
        build_mimo(causal=False)(torch.randn(1, 20, 3), params, params, return_state=True)


# ---- explicit kernels (Hyena's long convolutions) ------------------------------------------------


def build_explicit(*, causal: bool = True, chunk: int = 32, pre=False, skip=False, post=False):
    return _section("tz_ex", "explicit", causal=causal, chunk=chunk, pre=pre, skip=skip, post=post, kind=None,
                    disc=None, conj=True, mimo=False, explicit=True).tz_ex


# (causal, B, N, C, L, gates): L = N, L < N (taps out of reach of early chunks), L > N (cut to N)
EXPLICIT_CASES = [(True, 2, 63, 3, 63, False), (True, 2, 100, 4, 40, True), (True, 1, 63, 2, 80, False),
                  (False, 2, 100, 3, 100, True), (False, 2, 63, 3, 20, False)]


@pytest.mark.parametrize("causal,B,N,C,L,gates", EXPLICIT_CASES,
                         ids=[f"{'causal' if c[0] else 'mirrored'}-B{c[1]}-N{c[2]}-C{c[3]}-L{c[4]}{'-gates' if c[5] else ''}"
                              for c in EXPLICIT_CASES])
def test_explicit_forward_and_grads_match_torch_and_reference(causal, B, N, C, L, gates):
    """y = post ⊙ (K ∗ (pre ⊙ v) + skip ⊙ pre ⊙ v) with given taps K [L, C], against toeplitz_mix
    (FFT) and reference.direct_conv (float64, the literal Toeplitz matrix; a mirrored kernel is
    its own reverse): values and gradients of v, K and the gates."""
    g = torch.Generator().manual_seed(12)
    v = torch.randn(B, N, C, generator=g, requires_grad=True)
    K = (torch.randn(L, C, generator=g) * torch.exp(-torch.arange(L) / 30.0)[:, None]).requires_grad_()
    kw, inputs, names = {}, [v, K], ["v", "K"]
    if gates:
        kw = dict(pre=torch.randn(B, N, C, generator=g, requires_grad=True),
                  skip=torch.randn(C, generator=g, requires_grad=True),
                  post=torch.randn(B, N, C, generator=g, requires_grad=True))
        inputs += list(kw.values())
        names += list(kw)
    y = build_explicit(causal=causal, pre=gates, skip=gates, post=gates)(v, explicit_kernel=K, **kw)

    def unfused(mix):
        u = v * kw["pre"] if gates else v
        z = mix(u)
        return kw["post"] * (z + kw["skip"] * u) if gates else z

    y_ref = unfused(lambda u: toeplitz_mix(u, explicit_kernel=K, causal=causal, algorithm="fft"))
    assert y.shape == v.shape and torch.isfinite(y).all()
    assert rel(y, y_ref) < 1e-4
    Kd = K.detach().double()[:N]
    plain = ref.direct_conv(v.detach().double() * (kw["pre"].detach().double() if gates else 1), Kd,
                            K_rev=None if causal else Kd)
    if gates:
        plain = kw["post"].detach().double() * (plain + kw["skip"].detach().double()
                                                * v.detach().double() * kw["pre"].detach().double())
    assert rel(y, plain) < 1e-4
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), names):
        assert got is not None and rel(got, want) < 1e-3, what


def test_explicit_hyena_step_with_broadcast_gates_and_leading_dims():
    """Hyena's step v ← h ∗ (x ⊙ v) + b ⊙ (x ⊙ v) with a post gate broadcast over the batch and
    v [2, 3, N, C] (six batch rows): the fused call equals the PyTorch expression."""
    g = torch.Generator().manual_seed(13)
    N, C = 40, 4
    v, x = (torch.randn(2, 3, N, C, generator=g, requires_grad=True) for _ in range(2))
    q = torch.randn(N, C, generator=g, requires_grad=True)
    h = torch.randn(N, C, generator=g, requires_grad=True)
    b = torch.randn(C, generator=g, requires_grad=True)
    y = build_explicit(pre=True, skip=True, post=True)(v, explicit_kernel=h, pre=x, skip=b, post=q)
    w = x * v
    y_ref = q * (toeplitz_mix(w, explicit_kernel=h, algorithm="direct") + b * w)
    assert y.shape == v.shape and rel(y, y_ref) < 1e-4
    inputs = [v, x, q, h, b]
    for got, want, what in zip(grads(y, inputs), grads(y_ref, inputs), ["v", "x", "q", "h", "b"]):
        assert rel(got, want) < 1e-3, what


def test_explicit_generated_text_and_contract():
    text = tg.generate("hy_conv", kind=None, disc=None, conj=True, mimo=False, causal=True, explicit=True,
                       pre=True, skip=True, post=True)
    mirrored = tg.generate("hy_mir", kind=None, disc=None, conj=True, mimo=False, causal=False, explicit=True)
    compile(text, "gen", "exec")
    compile(mirrored, "gen", "exec")
    assert "def hy_conv_kernel(" in text and "def hy_conv(" in text
    assert "# [" not in text and "# [" not in mirrored
    assert "O(N·L)" in text and "O(N log N)" in text              # the cost, documented in the section
    assert "-taps[0]" in mirrored and "-taps[0]" not in text        # the mirrored read only when non-causal
    for line in text.splitlines():
        if line.startswith(("def ", "class ")):
            assert line.split()[1].startswith("hy_conv"), line
        elif line and not line[0].isspace() and "=" in line and not line.startswith(("#", "@")):
            assert line.startswith("hy_conv"), line
    mix = build_explicit()
    v = torch.randn(1, 20, 2)
    with pytest.raises(ValueError, match="explicit"):
        mix(v, make_params("ema", 2, 4, grad=False))
    with pytest.raises(ValueError, match="state"):
        mix(v, explicit_kernel=torch.randn(20, 2), return_state=True)
    with pytest.raises(ValueError, match=r"\[L, C\]"):
        mix(v, explicit_kernel=torch.randn(20, 3))
