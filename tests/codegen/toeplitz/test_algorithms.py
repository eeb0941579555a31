"""toeplitz_mix against the literal recurrence: every algorithm, forward and gradients (the
input, every parameter, the initial state), fp32 against float64 references, at awkward
sizes; chunked ≡ whole; split-and-carry ≡ whole; bidirectional; explicit kernels;
generation step by step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the Toeplitz runtime needs torch")

sys.path.insert(0, str(Path(__file__).parent))
from toeplitz_cases import case_id, leaves, make_params, rel  # noqa: E402

from codegen.toeplitz import reference as R  # noqa: E402
from codegen.toeplitz import torch_impl  # noqa: E402
from codegen.toeplitz.kernels import ssm_kernel  # noqa: E402
from codegen.toeplitz.torch_impl import ALGORITHMS, recurrent_step, toeplitz_mix  # noqa: E402

FWD_TOL, GRAD_TOL = 1e-4, 1e-4
SMALL = {"chunk": 8, "scan_block": 4}    # many chunks (and the recursive carry) at small N

CASES = [
    ("diag", "zoh", False, True),        # S4D
    ("diag", "bilinear", False, True),
    ("diag", "dss", False, True),        # DSS
    ("diag", "none", False, True),       # DLR
    ("diag", "zoh", True, True),         # S5
    ("dplr", "bilinear", False, True),   # S4
    ("dplr", "zoh", False, True),
    ("ema", "none", False, False),       # Mega
    ("shift", "none", False, False),     # H3's shift SSM
]
INIT = {("diag", "none"): "dlr", ("diag", "dss"): "dss"}
SIZES = [(2, 257, 60), (1, 63, 12)]


def _params(kind, disc, mimo, conj, channels, seed=0):
    return make_params(kind, disc, mimo=mimo, conj=conj, channels=channels, state=16, seed=seed,
                       init=INIT.get((kind, disc)))


def _full_state(h, kind, conj):
    """Our state → the reference's (conjugate pairs materialised for diagonal kinds)."""
    return torch.cat([h, h.conj()], dim=-1) if conj and kind == "diag" else h


def _check_grads(ours: dict, ref: dict, tol: float, what: str = ""):
    for name, t in ours.items():
        assert t.grad is not None, f"no gradient for {name}"
        err = rel(t.grad, ref[name].grad)
        assert err < tol, f"{what}gradient of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"B{s[0]}-N{s[1]}-C{s[2]}")
def test_forward_and_gradients_match_the_recurrence(sizes, case, algorithm):
    kind, disc, mimo, conj = case
    b, n, c = sizes
    p64 = _params(kind, disc, mimo, conj, c)
    g = torch.Generator().manual_seed(1)
    u64 = torch.randn(b, n, c, dtype=torch.float64, generator=g)
    w = torch.randn(b, n, c, dtype=torch.float64, generator=g)

    ref_p, ref_u = leaves(p64), u64.clone().requires_grad_()
    y_ref, _ = R.recurrence(ref_u, kind, ref_p, disc=disc, conj=conj, mimo=mimo)
    (y_ref * w).sum().backward()

    p32, u32 = leaves({k: v.float() for k, v in p64.items()}), u64.float().requires_grad_()
    y = toeplitz_mix(u32, kind=kind, params=p32, disc=disc, conj=conj, mimo=mimo, algorithm=algorithm, **SMALL)
    assert y.dtype == torch.float32 and y.shape == (b, n, c)
    assert rel(y, y_ref) < FWD_TOL, f"forward: relative error {rel(y, y_ref):.2e}"
    (y * w.float()).sum().backward()
    assert rel(u32.grad, ref_u.grad) < GRAD_TOL, f"gradient of v: relative error {rel(u32.grad, ref_u.grad):.2e}"
    _check_grads(p32, ref_p, GRAD_TOL)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_chunked_fft_equals_fft_when_chunk_does_not_divide_n(case):
    kind, disc, mimo, conj = case
    p64 = _params(kind, disc, mimo, conj, 6)
    p = {k: v.float() for k, v in p64.items()}
    u = torch.randn(2, 1000, 6, generator=torch.Generator().manual_seed(3))
    whole = toeplitz_mix(u.double(), kind=kind, params=p64, disc=disc, conj=conj, mimo=mimo, algorithm="fft")
    assert rel(toeplitz_mix(u, kind=kind, params=p, disc=disc, conj=conj, mimo=mimo, algorithm="fft"), whole) < 1e-4
    for chunk in (96, 1000, 4096):
        chunked = toeplitz_mix(u, kind=kind, params=p, disc=disc, conj=conj, mimo=mimo, algorithm="chunked_fft",
                               chunk=chunk)
        assert rel(chunked, whole) < 1e-4, (chunk, rel(chunked, whole))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_split_and_carry_the_state_equals_the_whole(case, algorithm):
    """y(u) = [y(u[:a]); y(u[a:] from the state u[:a] left)], and the states and their
    gradients (initial and final) equal the recurrence's."""
    kind, disc, mimo, conj = case
    c, n, a = 5, 61, 23
    p64 = _params(kind, disc, mimo, conj, c, seed=4)
    g = torch.Generator().manual_seed(5)
    u64 = torch.randn(2, n, c, dtype=torch.float64, generator=g)
    kw = dict(kind=kind, disc=disc, conj=conj, mimo=mimo, algorithm=algorithm, kernel_length=n, **SMALL)

    y_ref, h_ref = R.recurrence(u64, kind, p64, disc=disc, conj=conj, mimo=mimo, length=n)
    p32 = leaves({k: v.float() for k, v in p64.items()})
    u32 = u64.float()
    y1, h1 = toeplitz_mix(u32[:, :a], params=p32, return_state=True, **kw)
    h1 = h1.detach().requires_grad_()
    y2, h2 = toeplitz_mix(u32[:, a:], params=p32, initial_state=h1, return_state=True, **kw)
    assert rel(torch.cat([y1, y2], dim=1), y_ref) < FWD_TOL
    assert rel(_full_state(h2, kind, conj), h_ref) < FWD_TOL

    # gradients through the carried state: the second half against the recurrence started there
    ref_p = leaves(p64)
    h1_ref = _full_state(h1.detach().to(torch.complex128 if h1.is_complex() else torch.float64), kind, conj)
    h1_ref = h1_ref.clone().requires_grad_()
    y2_ref, h2_ref = R.recurrence(u64[:, a:], kind, ref_p, disc=disc, conj=conj, mimo=mimo, initial_state=h1_ref,
                                  length=n)
    w = torch.randn(y2_ref.shape, dtype=torch.float64, generator=g)
    half = h2.shape[-1] != h2_ref.shape[-1]          # conjugate pairs: ours holds one of each
    M = h2.shape[-1]
    v1 = torch.randn(h2.shape, dtype=h2_ref.dtype, generator=g)
    v = torch.cat([v1, v1.conj()], dim=-1) if half else v1
    ((y2_ref * w).sum() + (h2_ref * v.conj()).real.sum()).backward()
    cd = torch.complex64
    loss = (y2 * w.float()).sum() + (2.0 if half else 1.0) * (h2 * v1.to(cd).conj()).real.sum()
    loss.backward()
    _check_grads(p32, ref_p, 1e-3, "split: ")
    gf = h1_ref.grad                                 # (h, h̄) → the gradient of h is g₁ + conj(g₂)
    g_ref = gf[..., :M] + gf[..., M:].conj() if half else gf
    g_ref = g_ref if h1.is_complex() else g_ref.real
    assert rel(h1.grad, g_ref) < 1e-3, f"gradient of the initial state: {rel(h1.grad, g_ref):.2e}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "shift"] + [("shift", "none", False, False)], ids=case_id)
def test_bidirectional_counts_the_diagonal_once(case, algorithm):
    kind, disc, mimo, conj = case
    c, n = 7, 45
    fwd = _params(kind, disc, mimo, conj, c, seed=6)
    bwd = _params(kind, disc, mimo, conj, c, seed=7)
    u = torch.randn(2, n, c, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    K = ssm_kernel(kind, fwd, n, disc=disc, conj=conj, mimo=mimo)
    K_rev = ssm_kernel(kind, bwd, n, disc=disc, conj=conj, mimo=mimo)
    ref = R.direct_conv(u, K, K_rev=K_rev)
    y = toeplitz_mix(u.float(), kind=kind, params={k: v.float() for k, v in fwd.items()},
                     reverse_params={k: v.float() for k, v in bwd.items()}, causal=False, disc=disc, conj=conj,
                     mimo=mimo, algorithm=algorithm, **SMALL)
    assert rel(y, ref) < FWD_TOL


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "mirrored"])
@pytest.mark.parametrize("taps", [1, 17, 63, 90])
def test_explicit_kernel(taps, causal, algorithm):
    n, c = 63, 60
    g = torch.Generator().manual_seed(9)
    K = torch.randn(taps, c, dtype=torch.float64, generator=g)
    u = torch.randn(2, n, c, dtype=torch.float64, generator=g)
    Kn = K[:n]
    ref = R.direct_conv(u, Kn, K_rev=None if causal else Kn)
    Kf, uf = K.float().requires_grad_(), u.float().requires_grad_()
    y = toeplitz_mix(uf, explicit_kernel=Kf, causal=causal, algorithm=algorithm)
    assert rel(y, ref) < FWD_TOL
    y.sum().backward()
    Kd, ud = K.clone().requires_grad_(), u.clone().requires_grad_()
    Kdn = Kd[:n]
    R.direct_conv(ud, Kdn, K_rev=None if causal else Kdn).sum().backward()
    assert rel(Kf.grad, Kd.grad) < GRAD_TOL and rel(uf.grad, ud.grad) < GRAD_TOL


def test_explicit_kernel_declines_the_state_passing_algorithms():
    with pytest.raises(ValueError, match="explicit kernel runs with 'direct' or 'fft'"):
        toeplitz_mix(torch.randn(1, 8, 2), explicit_kernel=torch.randn(8, 2), algorithm="scan")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_recurrent_step_equals_the_mix(case):
    kind, disc, mimo, conj = case
    c, n = 4, 30
    p = {k: v.float() for k, v in _params(kind, disc, mimo, conj, c, seed=10).items()}
    u = torch.randn(3, n, c, generator=torch.Generator().manual_seed(11))
    y, h = toeplitz_mix(u, kind=kind, params=p, disc=disc, conj=conj, mimo=mimo, algorithm="fft", return_state=True)
    state, ys = None, []
    for t in range(n):
        yt, state = recurrent_step(state, u[:, t], kind=kind, params=p, disc=disc, conj=conj, mimo=mimo,
                                   kernel_length=n)
        ys.append(yt)
    assert rel(torch.stack(ys, dim=1), y) < FWD_TOL
    assert rel(state, h) < FWD_TOL


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_leading_dims_and_batch_invariance(algorithm):
    p = {k: v.float() for k, v in _params("diag", "zoh", False, True, 6).items()}
    u = torch.randn(2, 3, 50, 6, generator=torch.Generator().manual_seed(12))
    y = toeplitz_mix(u, kind="diag", params=p, disc="zoh", algorithm=algorithm, **SMALL)
    assert y.shape == u.shape
    one = toeplitz_mix(u[1, 2], kind="diag", params=p, disc="zoh", algorithm=algorithm, **SMALL)
    assert rel(y[1, 2], one) < 1e-6


@pytest.mark.parametrize("algorithm", ["chunked_fft", "scan"])
def test_no_grad_output_buffer_is_fully_written(monkeypatch, algorithm):
    """Without autograd the output is preallocated: fill it with NaN first."""
    original = torch_impl._Sink.__init__

    def nan_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.buf is not None:
            self.buf.fill_(float("nan"))

    monkeypatch.setattr(torch_impl._Sink, "__init__", nan_init)
    p = {k: v.float() for k, v in _params("diag", "zoh", True, True, 5).items()}
    u = torch.randn(2, 77, 5)
    with torch.no_grad():
        y = toeplitz_mix(u, kind="diag", params=p, disc="zoh", mimo=True, algorithm=algorithm, **SMALL)
    assert torch.isfinite(y).all()
    assert rel(y, toeplitz_mix(u, kind="diag", params=p, disc="zoh", mimo=True, algorithm="fft")) < 1e-5


def test_errors_say_what_to_do():
    p = {k: v.float() for k, v in _params("diag", "zoh", False, True, 2).items()}
    u = torch.randn(1, 8, 2)
    with pytest.raises(ValueError, match="unknown Toeplitz algorithm"):
        toeplitz_mix(u, kind="diag", params=p, disc="zoh", algorithm="cauchy")
    with pytest.raises(ValueError, match="needs reverse_params"):
        toeplitz_mix(u, kind="diag", params=p, disc="zoh", causal=False)
    with pytest.raises(ValueError, match="no recurrent state"):
        toeplitz_mix(u, kind="diag", params=p, reverse_params=p, disc="zoh", causal=False, return_state=True)
