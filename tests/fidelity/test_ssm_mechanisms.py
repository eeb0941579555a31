"""The SSM mechanisms of issue 12 (FIDELITY.md) against the released mathematics, written
out here from the authors' code: DSS's kernel and modes (ag1988/dss, DSSKernel, version
softmax), S4's bilinear DPLR kernel by its Cauchy/Woodbury generating function
(state-spaces/s4, SSMKernelDPLR) and its bidirectional F.pad layout, Mega's MultiHeadEMA and
its rotary relative-position bias (facebookresearch/mega). Each test loads the mixer of the
example file at small sizes (the same source the model runs) and compares forward and
backward with ‖ref − out‖/‖ref‖, the reference in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the mechanism tests run the generated modules")

import seqdsl  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"


def rel(ref, out) -> float:
    return float((ref - out).detach().norm() / ref.detach().norm())


def params_of(model) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())


def one(params: dict, suffix: str):
    hits = [v for k, v in params.items() if k.endswith(suffix)]
    assert len(hits) == 1, (suffix, sorted(params))
    return hits[0]


def causal_conv(u, K):
    """y_t = Σ_{s≤t} K[t − s] u_s per channel: u [B, N, C], K [C, N] (float64, by FFT)."""
    n = u.shape[1]
    y = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=2 * n) * torch.fft.rfft(K, n=2 * n), n=2 * n)
    return y[..., :n].transpose(1, 2)


def compare(model, reference, inputs, tol: float, tol_grad: float = 1e-3):
    """Forward and gradients (inputs and every parameter) of the module (fp32) against the
    reference (float64, autograd through the written-out formula). Gradients get a looser
    fp32 tolerance: Δ's gradient sums l·K_l terms over the whole kernel."""
    params = params_of(model)
    ins = [x.clone().requires_grad_(True) for x in inputs]
    y = model(*ins)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins + list(params.values()), g, allow_unused=True)
    ref_params = {k: v.detach().double().requires_grad_(True) for k, v in params.items()}
    ref_ins = [x.detach().double().requires_grad_(True) for x in inputs]
    yr = reference(ref_params, *ref_ins)
    ref_grads = torch.autograd.grad(yr, ref_ins + list(ref_params.values()), g.double(), allow_unused=True)
    assert rel(yr, y.double()) < tol, f"forward: relative error {rel(yr, y.double()):.2e}"
    names = [f"input {i}" for i in range(len(ins))] + list(params)
    for name, a, b in zip(names, ref_grads, grads):
        if a is None or float(a.norm()) == 0:
            continue
        assert b is not None, f"no gradient for {name}"
        assert rel(a, b.double()) < tol_grad, f"gradient of {name}: relative error {rel(a, b.double()):.2e}"


# ---- DSS (Gupta, Gu & Berant 2022; ag1988/dss src/models/sequence/ss/standalone/dss.py) ------


def hippo_skew_evals(n: int) -> torch.Tensor:
    """DSS's hippo_skew_evals: eigenvalues of (H − Hᵀ)/2, H_ij = √((2i+1)(2j+1)) for i > j,
    largest imaginary part first."""
    x = 2 * torch.arange(n, dtype=torch.float64) + 1
    hippo = (x[:, None] * x[None, :]).sqrt().tril(diagonal=-1)
    evals = torch.linalg.eigvals((hippo - hippo.T) / 2)
    return evals[evals.imag.argsort(descending=True)]


def dss_kernel_released(lam, log_dt, W, L: int):
    """DSSKernel.forward, version 'softmax', sep_dt_re_im: Λ [N] complex, log_dt [H, 2],
    W [H, N] complex -> K [H, L]. Modes with Re Λ > 0 are shifted by their last power, as
    DSS does (P − P_max, dt_Lambda_neg), and W·num/(den·Λ) uses DSS's reciprocal (ε = 1e-7).
    DSS computes P_max under torch.no_grad(), so its autograd gradient for a growing mode
    is not the derivative of its own kernel (the −(L−1)·d(ΔΛ) term is lost: 2% of the
    gradient of Δ here); P_max stays in the graph below, giving the true derivative of the
    same forward."""
    dt = log_dt.exp()
    dt_lam = torch.complex(dt[:, :1] * lam.real, dt[:, 1:] * lam.imag)           # [H N]
    P = dt_lam[..., None] * torch.arange(L, dtype=torch.float64)                  # [H N L]
    gt0 = (lam.real > 0).to(torch.float64)
    P = P - (dt_lam * (gt0 * (L - 1)))[..., None]
    S = P.exp()
    dt_lam_neg = dt_lam * (1 - 2 * gt0)
    num = dt_lam_neg.exp() - 1
    den = (dt_lam_neg * L).exp() - 1
    x = den * lam
    W = W * num * x.conj() / (x * x.conj() + 1e-7)
    return torch.einsum("hn,hnl->hl", W, S).real


@pytest.fixture(scope="module")
def dss_conv():
    return seqdsl.load(MODELS / "dss.seq", entry="dss_conv", backend="torch", D=3)


def test_dss_modes_are_the_skew_hippo_eigenvalues(dss_conv):
    """DSS's N = 64: 64 complex modes Λ = hippo_skew_evals(128)[:64] − 0.5, one Λ for all channels."""
    p = params_of(dss_conv)
    re, im = one(p, "kernel.A_real"), one(p, "kernel.A_imag")
    assert re.shape == im.shape == (1, 64)
    lam = torch.complex(re.double(), im.double())[0]
    ref = hippo_skew_evals(128)[:64] - 0.5
    assert rel(ref, lam) < 1e-6
    assert one(p, "kernel.log_dt").shape == (3, 2)          # Δ for Re Λ and Im Λ per channel
    assert one(p, "w_re").shape == one(p, "w_im").shape == (3, 64)   # W [H, N] complex, each part N(0, 1)


def test_dss_layer_equals_the_released_kernel(dss_conv):
    """y = K ∗ u + D·u with DSS's softmax kernel, including modes with Re Λ > 0 that the
    naive powers e^{ΔΛl} would overflow in fp32 (Re(ΔΛ)·L = 128)."""
    p = params_of(dss_conv)
    with torch.no_grad():
        re = one(p, "kernel.A_real")
        re[0, :5] = torch.tensor([0.5, 0.3, -0.2, 0.05, 0.4])   # growing modes, as DSS allows
        one(p, "kernel.log_dt")[:] = torch.log(torch.tensor([[1.0, 0.01], [0.2, 0.1], [0.002, 0.05]]))
    n = 256

    def reference(rp, u):
        lam = torch.complex(one(rp, "kernel.A_real"), one(rp, "kernel.A_imag"))[0]
        W = torch.complex(one(rp, "w_re"), one(rp, "w_im"))
        K = dss_kernel_released(lam, one(rp, "kernel.log_dt"), W, n)
        return causal_conv(u, K) + u * one(rp, "skip")

    torch.manual_seed(0)
    compare(dss_conv, reference, [torch.randn(2, n, 3)], tol=2e-4)


# ---- S4 (Gu, Goel & Ré 2022; state-spaces/s4 SSMKernelDPLR, FFTConv) -----------------------


def s4_cauchy_kernel(lam, P, B, C, dt, L: int):
    """S4's DPLR kernel by its generating function at the roots of unity (bilinear), with
    the conjugate half materialised: A = diag(Λ) − P P*, C̃ = C (I − Ā^L),
    K̂(ω) = 2/(1 + ω) · [k00 − k01 (1 + k11)⁻¹ k10] at z = (2/Δ)(1 − ω)/(1 + ω),
    k_ab = Σ_n a_n b_n / (z − Λ_n) for a ∈ {C̃, P̄}, b ∈ {B, P}; K = irfft(K̂). L odd (no ω = −1).
    Per channel: lam, P, B [G→C, S], C [C, S], dt [C]."""
    S = lam.shape[-1]
    A = torch.diag_embed(lam) - P[:, :, None] * P.conj()[:, None, :]
    eye = torch.eye(S, dtype=A.dtype)
    back = eye - dt[:, None, None] / 2 * A
    dA = torch.linalg.solve(back, eye + dt[:, None, None] / 2 * A)
    Ct = (C[:, None, :] @ (eye - torch.linalg.matrix_power(dA, L)))[:, 0]         # C̃ = C (I − Ā^L)
    omega = torch.exp(-2j * math.pi * torch.arange(L // 2 + 1, dtype=torch.float64) / L)
    z = (2 / dt[:, None]) * (1 - omega) / (1 + omega)                              # [C, F]
    r = 1 / (z[:, :, None] - lam[:, None, :])                                      # [C, F, S]

    def k(a, b):
        return (r * (a * b)[:, None, :]).sum(-1)

    kf = k(Ct, B) - k(Ct, P) * k(P.conj(), B) / (1 + k(P.conj(), P))
    return torch.fft.irfft(kf * 2 / (1 + omega), n=L)                              # [C, L]


def s4_system(rp, channels: int):
    """(Λ, P, B, C, Δ) of the forward SSM with the conjugate half materialised and the
    groups' (Λ, P, B) given to every channel."""
    def c(name):
        return torch.complex(one(rp, f"kernel.{name}_re"), one(rp, f"kernel.{name}_im"))

    def full(x):
        x = x.expand(channels, -1) if x.shape[0] == 1 else x
        return torch.cat([x, x.conj()], dim=-1)

    lam = torch.complex(-one(rp, "kernel.log_A_real").exp(), one(rp, "kernel.A_imag"))
    return full(lam), full(c("P")), full(c("B")), full(c("C")), one(rp, "kernel.log_dt").exp()


def test_s4_dplr_bilinear_equals_the_cauchy_kernel():
    """S4's unidirectional layer K ∗ u + D·u with K from the Cauchy/Woodbury generating
    function (the released kernel's mathematics) at LegS init, state 8, one (Λ, P, B) for all
    channels as s4.seq; the ZOH kernel of the same parameters is far from it (the review's
    point: a DPLR S4 must be bilinear)."""
    from codegen.toeplitz.kernels import ssm_kernel

    model = seqdsl.load(MODELS / "s4.seq", entry="s4_conv", backend="torch", D=3, S=8, bidirectional=0)
    n = 63

    def reference(rp, u):
        lam, P, B, C, dt = s4_system(rp, 3)
        K = s4_cauchy_kernel(lam, P, B, C, dt, n)
        return causal_conv(u, K) + u * one(rp, "skip")

    torch.manual_seed(1)
    compare(model, reference, [torch.randn(2, n, 3)], tol=1e-4)

    rp = {k: v.detach().double() for k, v in params_of(model).items()}
    cauchy = s4_cauchy_kernel(*s4_system(rp, 3), n)
    zoh = ssm_kernel("dplr", {k.rsplit(".", 1)[-1]: v for k, v in rp.items() if ".kernel." in k}, n,
                     disc="zoh").T
    assert rel(cauchy, zoh) > 0.05, f"ZOH vs bilinear DPLR: {rel(cauchy, zoh):.3f}"


def test_s4_bidirectional_is_the_released_fpad_layout():
    """S4's FFTConv, bidirectional: the backward kernel k1 (own C, Λ/P/B/Δ shared) enters as
    F.pad(k0, (0, L)) + F.pad(k1.flip(-1), (L, 0)) in a circular convolution of length 2L,
    i.e. y_i += Σ_{j>i} k1[j − i − 1] u_j."""
    model = seqdsl.load(MODELS / "s4.seq", entry="s4_conv", backend="torch", D=2, S=8)
    names = sorted(params_of(model))
    assert [k for k in names if "kernel_rev" in k] == [k for k in names if k.endswith(("kernel_rev.C_re",
                                                                                      "kernel_rev.C_im"))]
    n = 63

    def reference(rp, u):
        lam, P, B, C, dt = s4_system(rp, 2)
        C1 = torch.complex(one(rp, "kernel_rev.C_re"), one(rp, "kernel_rev.C_im"))
        k0 = s4_cauchy_kernel(lam, P, B, C, dt, n)
        k1 = s4_cauchy_kernel(lam, P, B, torch.cat([C1, C1.conj()], dim=-1), dt, n)
        k = torch.nn.functional.pad(k0, (0, n)) + torch.nn.functional.pad(k1.flip(-1), (n, 0))
        y = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=2 * n) * torch.fft.rfft(k, n=2 * n), n=2 * n)
        return y[..., :n].transpose(1, 2) + u * one(rp, "skip")

    torch.manual_seed(2)
    compare(model, reference, [torch.randn(2, n, 2)], tol=1e-4)


# ---- Mega (Ma et al. 2023; facebookresearch/mega fairseq/modules) ---------------------------


def test_mega_ema_equals_multihead_ema():
    """MultiHeadEMA (unidirectional), _compute_kernel and forward: p = σ(delta), α = σ(alpha),
    q = 1 − p·α, K[d, l] = Σ_n γ[d, n]·√(1/ndim) · p β q^l; out = SiLU(K ∗ x + ω ⊙ x). The
    file's ssm(ema) names the input weight alpha (the paper's α): its alpha is the released
    delta, its delta the released alpha, its C the released γ·√(1/ndim)."""
    model = seqdsl.load(MODELS / "mega.seq", entry="ema", backend="torch", D=3, Ne=4)
    n = 50

    def reference(rp, x):
        ndim = 4
        delta, alpha = one(rp, "kernel.alpha"), one(rp, "kernel.delta")        # released names
        gamma = one(rp, "kernel.C_re") / math.sqrt(1.0 / ndim)
        beta = one(rp, "kernel.beta")
        p, a = torch.sigmoid(delta), torch.sigmoid(alpha)
        q = 1.0 - p * a
        vander = torch.arange(n, dtype=torch.float64)[None, None, :] * torch.log(q)[..., None]
        kernel = (p * beta)[..., None] * torch.exp(vander)
        k = torch.einsum("dnl,dn->dl", kernel, gamma * math.sqrt(1.0 / ndim))
        return torch.nn.functional.silu(causal_conv(x, k) + x * one(rp, "omega"))

    torch.manual_seed(3)
    compare(model, reference, [torch.randn(2, n, 3)], tol=1e-4)


def test_mega_attention_has_the_rotary_relative_bias():
    """MovingAverageGatedAttention.softmax_attention with --rel-pos-bias rotary:
    softmax(q·scaling @ kᵀ + bias + causal) @ v, bias = rot(α) rot(β)ᵀ with
    RotaryRelativePositionalBias's sinusoids (10000^(−i/half), halves rotated)."""
    model = seqdsl.load(MODELS / "mega.seq", entry="attention", backend="torch", Z=8, Dv=6)
    n, z = 40, 8

    def rotary(x):
        half = z // 2
        freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / half))
        emb = torch.arange(n, dtype=torch.float64)[:, None] * freq[None, :]
        sin, cos = torch.sin(emb), torch.cos(emb)
        x1, x2 = x[:, :half], x[:, half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=1)

    def reference(rp, q, k, v):
        a = rotary(one(rp, "rel_alpha").expand(n, z))
        b = rotary(one(rp, "rel_beta").expand(n, z))
        bias = a @ b.T
        qk = (q * z ** -0.5) @ k.transpose(1, 2) + bias
        qk = qk.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(qk, dim=-1) @ v

    with torch.no_grad():       # a bias large enough to matter next to q·k
        one(params_of(model), "rel_alpha").normal_(0, 1.0)
        one(params_of(model), "rel_beta").normal_(0, 1.0)
    torch.manual_seed(4)
    compare(model, reference, [torch.randn(2, n, z), torch.randn(2, n, z), torch.randn(2, n, 6)], tol=1e-4)
