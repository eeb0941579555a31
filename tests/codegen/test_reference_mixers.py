"""The eight reference mixers of SPEC §6, loaded from examples/mixers/, equal their
published references — written here from the papers' formulas, independently of the
runtimes — forward and gradients (fp32, relative error < 1e-4 forward, 1e-3 gradients),
with the PyTorch backend and with the Triton backend (its generated kernels run through
TRITON_INTERPRET=1 on a CPU; every mixer must get a kernel there, no PyTorch fallback)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")
F = torch.nn.functional

import seqdsl  # noqa: E402

MIXERS = Path(__file__).resolve().parents[2] / "examples" / "mixers"


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.triton)])
def load(request):
    """``seqdsl.load`` with the backend under test."""
    backend = request.param
    if backend == "triton":
        pytest.importorskip("triton", reason="the Triton backend needs triton")

    def run(path, **dims):
        model = seqdsl.load(path, backend=backend, **dims)
        if backend == "triton":
            fallbacks = [f"{c.path}: {c.note}" for c in model.choices if c.backend != "triton"]
            assert not fallbacks, f"mixers left to PyTorch: {fallbacks}"
        return model

    return run


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check(model, reference, inputs, fwd_tol=1e-4, grad_tol=1e-3):
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ref_inputs = [t.detach().clone().double().requires_grad_(t.is_floating_point()) for t in inputs]
    out = model(*inputs)
    ref = reference(*ref_inputs)
    assert rel(out, ref) < fwd_tol, f"forward: relative error {rel(out, ref):.2e}"
    g = torch.randn_like(ref)
    out.backward(g.float())
    ref.backward(g)
    for i, (a, b) in enumerate(zip(inputs, ref_inputs)):
        if a.grad is not None:
            assert rel(a.grad, b.grad) < grad_tol, f"gradient of input {i}: relative error {rel(a.grad, b.grad):.2e}"


@pytest.mark.parametrize("causal", [1, 0])
def test_softmax_attention_equals_sdpa(causal, load):
    model = load(MIXERS / "softmax_attention.seq", B=2, H=3, N=37, Dh=16, causal=causal)
    q, k, v = model.example_inputs()

    def reference(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=q.shape[-1] ** -0.5)

    check(model, reference, (q, k, v))


def test_sliding_window_equals_sdpa_with_a_band_mask(load):
    w = 8
    model = load(MIXERS / "sliding_window.seq", B=2, H=2, N=45, Dh=16, W=w)
    q, k, v = model.example_inputs()

    def reference(q, k, v):
        n = q.shape[-2]
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        band = (j <= i) & (j > i - w)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=band, scale=q.shape[-1] ** -0.5)

    check(model, reference, (q, k, v))


def test_linear_attention_equals_katharopoulos(load):
    model = load(MIXERS / "linear_attention.seq", B=2, H=2, N=33, Dh=8)
    q, k, v = model.example_inputs()

    def reference(q, k, v):
        # φ = elu + 1; o_i = φ(q_i)ᵀ Σ_{j≤i} φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_{j≤i} φ(k_j))
        fq, fk = F.elu(q) + 1, F.elu(k) + 1
        s = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)
        z = torch.cumsum(fk, dim=-2)
        num = (fq.unsqueeze(-2) @ s).squeeze(-2)
        return num / (fq * z).sum(-1, keepdim=True)

    check(model, reference, (q, k, v))


def test_retention_equals_retnet(load):
    model = load(MIXERS / "retention.seq", B=2, H=4, N=29, Dh=8)
    q, k, v = model.example_inputs()

    def reference(q, k, v):
        h, n, d = q.shape[1], q.shape[2], q.shape[3]
        gamma = 1 - 2.0 ** (-5 - torch.arange(h, dtype=q.dtype))
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        decay = torch.where(j <= i, gamma[:, None, None] ** (i - j).to(q.dtype), torch.zeros((), dtype=q.dtype))
        return ((q @ k.transpose(-1, -2)) * d ** -0.5 * decay) @ v

    check(model, reference, (q, k, v))


def test_gla_equals_the_recurrence(load):
    model = load(MIXERS / "gla.seq", B=2, H=2, N=21, Dk=8, Dv=12)
    q, k, v, g = model.example_inputs()
    g = F.logsigmoid(g)   # a log-space gate: log α ≤ 0

    def reference(q, k, v, g):
        b, h, n, dk = q.shape
        state = torch.zeros(b, h, dk, v.shape[-1], dtype=q.dtype)
        outs = []
        for t in range(n):
            state = torch.exp(g[:, :, t]).unsqueeze(-1) * state + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
            outs.append((q[:, :, t].unsqueeze(-2) * dk ** -0.5 @ state).squeeze(-2))
        return torch.stack(outs, dim=2)

    check(model, reference, (q, k, v, g))


def s4d_reference(u, log_dt, log_A_real, A_imag, C_re, C_im, D_skip, bilinear=False):
    """Gu et al. 2022 (S4D): K_l = 2·Re Σ_n C_n (exp(ΔA_n) − 1)/A_n · exp(ΔA_n)^l, y = K ∗ u + D u.
    ``bilinear``: λ = (1 + ΔA/2)/(1 − ΔA/2), B̄ = Δ/(1 − ΔA/2) (H3's SSKernelDiag default)."""
    n = u.shape[-2]
    dt = torch.exp(log_dt)[:, None]                                     # [D, 1]
    A = torch.complex(-torch.exp(log_A_real), A_imag)                   # [D, S2]
    C = torch.complex(C_re, C_im)
    dtA = A * dt
    B_bar = dt / (1 - dtA / 2) if bilinear else (torch.exp(dtA) - 1) / A
    log_lam = torch.log((1 + dtA / 2) / (1 - dtA / 2)) if bilinear else dtA
    powers = torch.exp(log_lam.unsqueeze(-1) * torch.arange(n, dtype=u.dtype))   # [D, S2, N]
    K = 2 * torch.einsum("dn,dnl->dl", C * B_bar, powers).real          # [D, N]
    u_f = torch.fft.rfft(u.transpose(-1, -2), n=2 * n)                  # [B, D, N+1]
    y = torch.fft.irfft(u_f * torch.fft.rfft(K, n=2 * n), n=2 * n)[..., :n]
    return y.transpose(-1, -2) + u * D_skip


def test_s4d_equals_the_vandermonde_kernel(load):
    model = load(MIXERS / "s4d.seq", B=2, N=40, D=6, S2=4)
    u, log_dt, log_A_real, A_imag, C_re, C_im, D_skip = model.example_inputs()
    log_dt = torch.linspace(math.log(1e-3), math.log(1e-1), 6)
    log_A_real = torch.full((6, 4), math.log(0.5))
    A_imag = math.pi * torch.arange(4.0).expand(6, 4)
    check(model, s4d_reference, (u, log_dt, log_A_real, A_imag, C_re, C_im, D_skip))


def test_selective_scan_equals_mamba_reference(load):
    model = load(MIXERS / "selective_scan.seq", B=2, Dm=5, S=3, N=23, softplus=1)
    u, delta, A, Bm, C, D = model.example_inputs()
    A = -torch.exp(A)   # Mamba's A is negative

    def reference(u, delta, A, Bm, C, D):
        # h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t,  y_t = C_t · h_t + D u_t  (Δ = softplus(delta))
        dt = F.softplus(delta)
        b, dm, n = u.shape
        h = torch.zeros(b, dm, A.shape[1], dtype=u.dtype)
        ys = []
        for t in range(n):
            h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * Bm[:, None, :, t] * u[:, :, t, None]
            ys.append((h * C[:, None, :, t]).sum(-1))
        return torch.stack(ys, dim=-1) + u * D[:, None]

    check(model, reference, (u, delta, A, Bm, C, D))


def test_h3_equals_its_two_recurrences(load):
    """H3 (Fu et al. 2023): y = q ⊙ SSM_diag(SSM_shift(k) ⊙ v), each SSM with its skip."""
    model = load(MIXERS / "h3.seq", B=2, N=19, D=4, shift_state=3, diag_state=4)
    q, k, v = model.example_inputs()
    params = {name: p.detach().double() for name, p in model.named_parameters()}

    def find(suffix):
        matches = [v for n, v in params.items() if n.endswith(suffix)]
        assert len(matches) == 1, (suffix, list(params))
        return matches[0]

    def reference(q, k, v):
        n = q.shape[-2]
        # shift SSM: K_l = C[:, l] for l < S (A shifts the state, B = e_1), then the D skip
        c_shift = find("shift_ssm.kernel.C_re")                      # [D, S]
        taps = torch.zeros(c_shift.shape[0], n, dtype=q.dtype)
        taps[:, : c_shift.shape[1]] = c_shift
        ks = torch.stack([sum(taps[:, lag] * k[:, t - lag] for lag in range(t + 1)) for t in range(n)], dim=1)
        ks = ks + k * find("D_shift")
        kv = ks * v
        # diagonal SSM (bilinear, as H3's SSKernelDiag): the S4D kernel of its parameters, then its D skip
        pre = [n_ for n_ in params if n_.endswith("kernel.log_dt") and "diag" in n_][0].rsplit(".", 2)[0]
        y = s4d_reference(kv, params[pre + ".kernel.log_dt"], params[pre + ".kernel.log_A_real"],
                          params[pre + ".kernel.A_imag"], params[pre + ".kernel.C_re"],
                          params[pre + ".kernel.C_im"], find("D_diag"), bilinear=True)
        return q * y

    check(model, reference, (q, k, v))
