"""``ssm(diag, init = legs, blocks = k)``: S5's block-diagonal initialisation (lindermanlab/S5,
run_train.py: make_DPLR_HiPPO(ssm_size / blocks), Λ[:block_size / 2] under conjugate symmetry,
tiled over the blocks). Each block's Λ is checked against the eigenvalues of the normal part of
HiPPO-LegS of the block's size, computed here from the matrix itself:
    A_nk = −√(2n+1)√(2k+1) (n > k), −(n+1) (n = k), 0 (n < k);  p_n = √(n + ½);
    A + p pᵀ = −½ I + (skew-symmetric)  ⇒  Λ = −½ + i·(eigenvalues of the skew part, the
    positive ones)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the generated module needs torch")

import seqdsl  # noqa: E402


def legs_normal_eigenvalues(size: int) -> torch.Tensor:
    n = torch.arange(size, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -(torch.tril(r[:, None] * r[None, :], diagonal=-1) + torch.diag(n + 1))
    p = torch.sqrt(n + 0.5)
    normal = A + p[:, None] * p[None, :]
    ev = torch.linalg.eigvals(normal)
    return ev[ev.imag > 0]


def test_each_block_holds_the_eigenvalues_of_a_smaller_legs():
    src = ("dim B = 1, N = 8, D = 4\nmodel m(u: [B, N, D]) -> [B, N, D] {\n"
           "  return mix(v = u, mask = toeplitz(ssm(diag, state = 32, init = legs, mimo = true, blocks = 4)))\n}\n")
    model = seqdsl.load(src)
    state = model.state_dict()
    imag = next(v for k, v in state.items() if k.endswith("A_imag")).double()
    real = -torch.exp(next(v for k, v in state.items() if k.endswith("log_A_real")).double())
    assert imag.shape[-1] == 16                                # 32 states, conjugate pairs: 16 modes
    want = legs_normal_eigenvalues(8)                          # a LegS of 32 / 4 states: 4 modes
    assert torch.allclose(want.real, torch.full_like(want.real, -0.5))
    for block in imag.reshape(4, 4):
        assert torch.allclose(block.sort().values, want.imag.sort().values, atol=1e-5)
    assert torch.allclose(real, torch.full_like(real, -0.5), atol=1e-6)


def test_blocks_that_do_not_divide_the_modes_are_refused(check_text):
    src = ("dim B = 1, N = 8, D = 4\nmodel m(u: [B, N, D]) -> [B, N, D] {\n"
           "  return mix(v = u, mask = toeplitz(ssm(diag, state = 32, init = legs, mimo = true, blocks = 3)))\n}\n")
    with pytest.raises(seqdsl.SeqError, match="blocks = 3 must divide the 16 modes") as e:
        check_text(src)
    assert e.value.pos.line == 3
    with pytest.raises(seqdsl.SeqError, match="kind = diag, init = legs") as e:
        check_text(src.replace("init = legs", "init = s4d_lin").replace("blocks = 3", "blocks = 2"))
    assert e.value.pos.line == 3
