"""The published mixers built on toeplitz_mix: S4D (SPEC §6, written here from the paper's
formula, independently of the runtime) and H3's q ⊙ SSM_diag(SSM_shift(k) ⊙ v) against
the recurrences. Forward and gradients, fp32 against float64."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the Toeplitz runtime needs torch")

sys.path.insert(0, str(Path(__file__).parent))
from toeplitz_cases import leaves, make_params, rel  # noqa: E402

from codegen.toeplitz import reference as R  # noqa: E402
from codegen.toeplitz.torch_impl import ALGORITHMS, toeplitz_mix  # noqa: E402


def s4d_paper(u, log_dt, log_A_real, A_imag, C_re, C_im, D_skip):
    """Gu et al. 2022 (S4D), ZOH: K_l = 2·Re Σ_n C_n (exp(ΔA_n) − 1)/A_n · exp(ΔA_n)^l, a
    Vandermonde product; y = irfft(rfft(u, 2N)·rfft(K, 2N))[:N] + D·u."""
    n = u.shape[1]
    A = -torch.exp(log_A_real) + 1j * A_imag                         # [D, S/2]
    dtA = A * torch.exp(log_dt)[:, None]
    C = (C_re + 1j * C_im) * (torch.exp(dtA) - 1) / A
    vander = torch.exp(dtA[..., None] * torch.arange(n, dtype=u.dtype))   # [D, S/2, N]
    K = 2 * torch.einsum("dn,dnl->dl", C, vander).real                # [D, N]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * n, dim=1) * torch.fft.rfft(K.T, n=2 * n, dim=0), n=2 * n, dim=1)
    return y[:, :n] + u * D_skip


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("n", [63, 257])
def test_s4d_equals_the_paper(n, algorithm):
    d, half = 60, 32
    g = torch.Generator().manual_seed(0)
    p = make_params("diag", "zoh", channels=d, state=2 * half, init="s4d_lin")
    D_skip = torch.randn(d, dtype=torch.float64, generator=g)
    u = torch.randn(2, n, d, dtype=torch.float64, generator=g)
    w = torch.randn(2, n, d, dtype=torch.float64, generator=g)
    names = ("log_dt", "log_A_real", "A_imag", "C_re", "C_im")

    ref_in = [u.clone().requires_grad_()] + [p[k].clone().requires_grad_() for k in names] + [D_skip.clone().requires_grad_()]
    ref = s4d_paper(*ref_in)
    (ref * w).sum().backward()

    ours_in = [t.detach().float().requires_grad_() for t in ref_in]
    params = dict(zip(names, ours_in[1:6]))
    y = toeplitz_mix(ours_in[0], kind="diag", params=params, disc="zoh", algorithm=algorithm, chunk=40,
                     scan_block=16) + ours_in[0] * ours_in[6]
    assert rel(y, ref) < 1e-4, f"forward: {rel(y, ref):.2e}"
    (y * w.float()).sum().backward()
    for name, a, b in zip(("u",) + names + ("D",), ours_in, ref_in):
        assert rel(a.grad, b.grad) < 1e-4, f"gradient of {name}: {rel(a.grad, b.grad):.2e}"


def shift_loop(k, taps):
    """y_t = Σ_{i<S} C_i k_{t−i}: H3's shift SSM, one tap at a time."""
    y = torch.zeros_like(k)
    for i in range(taps.shape[1]):
        y[:, i:] = y[:, i:] + taps[:, i] * k[:, : k.shape[1] - i]
    return y


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_h3_equals_the_recurrences(algorithm):
    b, n, d = 2, 63, 60
    g = torch.Generator().manual_seed(1)
    shift = make_params("shift", "none", channels=d, state=4, seed=1)
    diag = make_params("diag", "zoh", channels=d, state=16, seed=2, init="s4d_lin")
    q, k, v, w = (torch.randn(b, n, d, dtype=torch.float64, generator=g) for _ in range(4))

    rq, rk, rv = (t.clone().requires_grad_() for t in (q, k, v))
    rs, rd = leaves(shift), leaves(diag)
    kv = shift_loop(rk, rs["C_re"]) * rv
    assert rel(kv, R.recurrence(rk, "shift", rs, disc="none", conj=False)[0] * rv) < 1e-12
    ref = rq * R.recurrence(kv, "diag", rd, disc="zoh")[0]
    (ref * w).sum().backward()

    oq, ok, ov = (t.float().requires_grad_() for t in (q, k, v))
    os_, od = leaves({n_: t.float() for n_, t in shift.items()}), leaves({n_: t.float() for n_, t in diag.items()})
    kv32 = toeplitz_mix(ok, kind="shift", params=os_, disc="none", conj=False, algorithm=algorithm) * ov
    y = oq * toeplitz_mix(kv32, kind="diag", params=od, disc="zoh", algorithm=algorithm, chunk=16, scan_block=8)
    assert rel(y, ref) < 1e-4, f"forward: {rel(y, ref):.2e}"
    (y * w.float()).sum().backward()
    for name, a, b_ in [("q", oq, rq), ("k", ok, rk), ("v", ov, rv)]:
        assert rel(a.grad, b_.grad) < 1e-4, f"gradient of {name}: {rel(a.grad, b_.grad):.2e}"
    for name in os_:
        assert rel(os_[name].grad, rs[name].grad) < 1e-4, f"gradient of shift {name}"
    for name in od:
        assert rel(od[name].grad, rd[name].grad) < 1e-4, f"gradient of diag {name}"


def test_s4d_at_a_long_length_in_fp32():
    """At N = 2^16 chunked_fft and scan agree with fft in float64 (the taps reach λ^65535)."""
    d, n = 8, 1 << 16
    p = make_params("diag", "zoh", channels=d, state=32, init="s4d_lin")
    u = torch.randn(1, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = toeplitz_mix(u, kind="diag", params=p, disc="zoh", algorithm="fft")
        p32, u32 = {k: v.float() for k, v in p.items()}, u.float()
        for algorithm in ("fft", "chunked_fft", "scan"):
            y = toeplitz_mix(u32, kind="diag", params=p32, disc="zoh", algorithm=algorithm)
            assert rel(y, ref) < 1e-4, (algorithm, rel(y, ref))
    assert math.isfinite(float(ref.norm()))
