"""The SSM primitives of issue 12 against their formulas written out: a bidirectional SSM
whose backward direction shares Λ, B, Δ and has its own C, meeting the diagonal once, one
token later (S4's F.pad layout) or twice (S5's two scans), on every algorithm and on the
Triton kernels; S5's bidirectional scan as released; parameters shared by channel groups
(S4's n_ssm); the Δ range and H3's shift-SSM initialisation. Forward and backward, with
‖ref − out‖/‖ref‖; N = 37 crosses the chunk (16) and scan block (8) boundaries.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the SSM runtime needs torch")

import seqdsl  # noqa: E402
from codegen.toeplitz import reference as R  # noqa: E402
from codegen.toeplitz.kernels import init_ssm_params, ssm_kernel  # noqa: E402
from codegen.toeplitz.torch_impl import toeplitz_mix  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"


def rel(ref, out) -> float:
    return float((ref - out).detach().norm() / ref.detach().norm())


def diag_params(C: int, M: int, seed: int) -> dict[str, torch.Tensor]:
    shapes = {"log_dt": (C,), "log_A_real": (C, M), "A_imag": (C, M), "C_re": (C, M), "C_im": (C, M)}
    return init_ssm_params("diag", "s4d_lin", shapes, torch.Generator().manual_seed(seed), dtype=torch.float64)


def impulse_kernel(params, n: int) -> torch.Tensor:
    """K [n, C] by stepping the literal recurrence of reference.py on a unit impulse."""
    u = torch.zeros(1, n, params["C_re"].shape[0], dtype=torch.float64)
    u[:, 0] = 1
    return R.recurrence(u, "diag", params, disc="zoh")[0][0]


def bidirectional_matrix(K, Kb, n: int, diagonal: str) -> torch.Tensor:
    """M [n, n, C]: M_ij = K[i − j] for j ≤ i; for the backward part, M_ij += Kb[j − i] for j > i
    ("once"), Kb[j − i − 1] for j > i ("shift"), Kb[j − i] for j ≥ i ("twice")."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    d = i - j
    M = torch.where((d >= 0)[..., None], K[d.clamp(min=0)], 0.0)
    back = -d - (1 if diagonal == "shift" else 0)
    keep = (d < 0) if diagonal != "twice" else (d <= 0)
    return M + torch.where(keep[..., None], Kb[back.clamp(min=0)], 0.0)


@pytest.fixture(scope="module")
def bidirectional_case():
    B, n, C, M = 2, 37, 3, 4
    params = diag_params(C, M, 0)
    back = {**params, **{k: v for k, v in diag_params(C, M, 1).items() if k in ("C_re", "C_im")}}  # own C only
    u = torch.randn(B, n, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return params, back, u, impulse_kernel(params, n), impulse_kernel(back, n)


@pytest.mark.parametrize("algorithm", ["direct", "fft", "chunked_fft", "scan"])
def test_bidirectional_shared_ssm_on_every_algorithm(algorithm, bidirectional_case):
    params, back, u, K, Kb = bidirectional_case
    n = u.shape[1]
    for diagonal in ("once", "shift", "twice"):
        y = toeplitz_mix(u, kind="diag", params=params, reverse_params=back, causal=False, disc="zoh",
                         diagonal=diagonal, algorithm=algorithm, chunk=16, scan_block=8)
        ref = torch.einsum("ijc,bjc->bic", bidirectional_matrix(K, Kb, n, diagonal), u)
        assert rel(ref, y) < 1e-10, f"{diagonal}/{algorithm}: {rel(ref, y):.2e}"


def test_bidirectional_gradients_reach_the_shared_and_own_parameters():
    """Backward of the shifted layout against autograd through the dense-matrix formula."""
    n, C, M = 37, 3, 4
    base = diag_params(C, M, 0)
    own = {k: v for k, v in diag_params(C, M, 1).items() if k in ("C_re", "C_im")}
    p = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    q = {k: v.clone().requires_grad_(True) for k, v in own.items()}
    u = torch.randn(2, n, C, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    g = torch.randn(2, n, C, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    leaves = [u, *p.values(), *q.values()]
    y = toeplitz_mix(u, kind="diag", params=p, reverse_params={**p, **q}, causal=False, disc="zoh",
                     diagonal="shift", algorithm="fft")
    got = torch.autograd.grad(y, leaves, g)
    Mx = bidirectional_matrix(impulse_kernel(p, n), impulse_kernel({**p, **q}, n), n, "shift")
    want = torch.autograd.grad(torch.einsum("ijc,bjc->bic", Mx, u), leaves, g)
    for name, a, b in zip(["u", *p, *(f"rev.{k}" for k in q)], want, got):
        assert rel(a, b) < 1e-8, name


def test_s5_layer_is_two_scans_sharing_lambda_and_b():
    """S5's apply_ssm (bidirectional, conj_sym): x_k = Λ̄ x_{k−1} + B̄ u_k forwards and
    backwards (xs2, reverse=True), y_k = 2·Re(C1 x_k + C2 x2_k) + D ⊙ u_k, Λ̄ = e^{ΔΛ},
    B̄ = (Λ̄ − 1)/Λ · B with Δ per state — the s5_ssm mixer of s5.seq."""
    model = seqdsl.load(MODELS / "s5.seq", entry="s5_ssm", backend="torch", D=3, P=8, Blocks=2)
    params = dict(model.named_parameters())

    def get(suffix):
        hits = [v for k, v in params.items() if k.endswith(suffix)]
        assert len(hits) == 1, suffix
        return hits[0].detach().double()

    assert sorted(k.rsplit(".", 1)[-1] for k in params if "kernel_rev" in k) == ["C_im", "C_re"]
    n = 29
    u = torch.randn(2, n, 3, generator=torch.Generator().manual_seed(5))
    lam = torch.complex(-get("kernel.log_A_real").exp(), get("kernel.A_imag"))
    dt = get("kernel.log_dt").exp()
    lam_bar = torch.exp(dt * lam)
    b_bar = ((lam_bar - 1) / lam)[:, None] * torch.complex(get("kernel.B_re"), get("kernel.B_im"))  # [M, D]
    c1 = torch.complex(get("kernel.C_re"), get("kernel.C_im"))
    c2 = torch.complex(get("kernel_rev.C_re"), get("kernel_rev.C_im"))
    bu = torch.einsum("md,bnd->bnm", b_bar, u.double().to(torch.complex128))
    xs, xs2 = torch.zeros_like(bu), torch.zeros_like(bu)
    x = torch.zeros_like(bu[:, 0])
    for k in range(n):
        x = lam_bar * x + bu[:, k]
        xs[:, k] = x
    x = torch.zeros_like(bu[:, 0])
    for k in reversed(range(n)):
        x = lam_bar * x + bu[:, k]
        xs2[:, k] = x
    ref = 2 * (xs @ c1.T + xs2 @ c2.T).real + u.double() * get("skip")
    assert rel(ref, model(u).double()) < 1e-5


def test_groups_share_a_by_channel_mod_g():
    """groups = G (S4's n_ssm): channel c's kernel is that of the single-channel SSM with
    A = A[c mod G] and its own C, Δ (S4's repeat 't n -> (v t) n')."""
    C, G, M, n = 6, 2, 4, 40
    g = torch.Generator().manual_seed(6)
    shapes = {"log_dt": (C,), "log_A_real": (G, M), "A_imag": (G, M), "C_re": (C, M), "C_im": (C, M)}
    p = init_ssm_params("diag", "random", shapes, g, dtype=torch.float64)
    K = ssm_kernel("diag", p, n, disc="bilinear")
    for c in range(C):
        one = {k: (v[c % G: c % G + 1] if k in ("log_A_real", "A_imag") else v[c: c + 1]) for k, v in p.items()}
        assert rel(ssm_kernel("diag", one, n, disc="bilinear")[:, 0], K[:, c]) < 1e-12


def test_dplr_groups_share_p_and_b():
    """A DPLR SSM with groups = 1: Λ, P, B one set for all channels, as s4.seq (n_ssm: 1); the
    kernel equals the literal recurrence of the dense system A = Λ − P P*."""
    C, M, n = 3, 4, 30
    shapes = {"log_dt": (C,), "log_A_real": (1, M), "A_imag": (1, M), "P_re": (1, M), "P_im": (1, M),
              "B_re": (1, M), "B_im": (1, M), "C_re": (C, M), "C_im": (C, M)}
    p = init_ssm_params("dplr", "legs", shapes, torch.Generator().manual_seed(7), dtype=torch.float64)
    u = torch.zeros(1, n, C, dtype=torch.float64)
    u[:, 0] = 1
    ref = R.recurrence(u, "dplr", p, disc="bilinear")[0][0]
    assert rel(ref, ssm_kernel("dplr", p, n, disc="bilinear")) < 1e-10


def test_dt_range_and_shift_initialisation():
    g = torch.Generator().manual_seed(8)
    log_dt = init_ssm_params("diag", "legs", {"log_dt": (4000,)}, g, dt_range=(1e-4, 1e-2))["log_dt"]
    assert math.log(1e-4) <= float(log_dt.min()) and float(log_dt.max()) <= math.log(1e-2)
    assert float(log_dt.min()) < math.log(2e-4) and float(log_dt.max()) > math.log(5e-3)   # the whole range
    model = seqdsl.load(MODELS / "s5.seq", entry="s5_ssm", backend="torch", D=3, P=8, Blocks=2)   # dt_min = 0.0001
    dt = next(v for k, v in model.named_parameters() if k.endswith("kernel.log_dt")).detach()
    assert float(dt.min()) >= math.log(1e-4) - 1e-6
    # H3's shift SSM: kaiming_uniform_(a = √5) of C [H, 1, S] is U(±1/√S)
    taps = init_ssm_params("shift", "random", {"C_re": (300, 64)}, g)["C_re"]
    assert float(taps.abs().max()) <= 1 / 8 and float(taps.abs().max()) > 0.95 / 8
    assert abs(float(taps.std()) - 1 / 8 / math.sqrt(3)) < 0.002


# ---- Triton (TRITON_INTERPRET=1 on CPU, tests/conftest.py) -----------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("mimo,diagonal", [(False, "shift"), (True, "twice")], ids=["diag-shift", "mimo-twice"])
def test_triton_bidirectional_layouts(mimo, diagonal):
    """The generated Triton sections take S4's (shift) and S5's (twice) layouts like
    toeplitz_mix ("once" is tests/triton/test_toeplitz_triton.py's)."""
    from codegen.toeplitz import triton_gen as tg
    from codegen.torch.load import load_source

    header = "import math\nimport torch\nimport triton\nimport triton.language as tl\nfrom codegen import masks as M\n"
    text = tg.generate("bi", kind="diag", disc="zoh", conj=True, mimo=mimo, causal=False, explicit=False, chunk=16)
    mix = load_source(header + text, f"fidelity_bidir_{int(mimo)}").bi
    B, n, C, M = 1, 21, 3, 4
    g = torch.Generator().manual_seed(9)
    if mimo:
        shapes = {"log_dt": (M,), "log_A_real": (M,), "A_imag": (M,), "B_re": (M, C), "B_im": (M, C),
                  "C_re": (C, M), "C_im": (C, M)}
    else:
        shapes = {"log_dt": (C,), "log_A_real": (C, M), "A_imag": (C, M), "C_re": (C, M), "C_im": (C, M)}
    p = {k: v.requires_grad_(True) for k, v in init_ssm_params("diag", "s4d_lin", shapes, g).items()}
    own = {k: v.requires_grad_(True) for k, v in init_ssm_params("diag", "s4d_lin", shapes, g).items()
           if k in ("C_re", "C_im")}
    back = {**p, **own}
    u = torch.randn(B, n, C, generator=g, requires_grad=True)
    leaves = [u, *p.values(), *own.values()]
    y = mix(u, p, back, diagonal=diagonal)
    y_ref = toeplitz_mix(u, kind="diag", params=p, reverse_params=back, causal=False, disc="zoh", mimo=mimo,
                         diagonal=diagonal, algorithm="scan" if mimo else "fft")
    assert rel(y_ref, y) < 1e-4
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(10))
    for a, b in zip(torch.autograd.grad(y_ref, leaves, w), torch.autograd.grad(y, leaves, w)):
        assert rel(a, b) < 1e-3
