"""The fused diagonal-SSM decoding step (codegen/toeplitz/step_kernel.py) against the torch
step, in Triton's interpreter (fp32 / complex64, tiny sizes): h' = λh + bu, y = scale·Re Σ c h'
for complex diagonal systems (zoh, bilinear, without conjugate pairs) and Mega's real EMA,
with 19 channels over blocks of 16 and a mode count that is not a multiple of the block of 32.
Forward only: the kernel serves steps under no_grad (the torch ops run whenever a gradient is
wanted, and on a CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the Toeplitz runtime needs torch")
pytest.importorskip("triton", reason="the step kernel is a Triton kernel")

sys.path.insert(0, str(Path(__file__).parent))
from toeplitz_cases import make_params, rel  # noqa: E402

from codegen.toeplitz import step as toeplitz_step  # noqa: E402
from codegen.toeplitz import torch_impl  # noqa: E402
from codegen.toeplitz.kernels import discretize  # noqa: E402
from codegen.toeplitz.step_kernel import fused_diag_step  # noqa: E402
from codegen.toeplitz.torch_impl import recurrent_step, toeplitz_mix  # noqa: E402

TOL = 1e-5
CASES = [("diag", "zoh", True), ("diag", "bilinear", False), ("ema", "none", False)]


def _params(kind: str, disc: str, conj: bool, channels: int = 19, state: int = 74) -> dict:
    return {k: t.float() for k, t in make_params(kind, disc, conj=conj, channels=channels,
                                                 state=state if kind == "diag" else 37, seed=2).items()}


@pytest.mark.parametrize("kind,disc,conj", CASES, ids=lambda c: str(c))
def test_fused_diag_step_equals_the_torch_step(kind, disc, conj):
    p = _params(kind, disc, conj)
    system = discretize(kind, p, disc=disc, conj=conj)
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 19, generator=g)
    _, h = recurrent_step(None, torch.randn(2, 19, generator=g), system=system)     # a state that is not zero
    _, h = recurrent_step(h, torch.randn(2, 19, generator=g), system=system)
    with torch.no_grad():
        want_y, want_h = recurrent_step(h, u, system=system)
        y, new = fused_diag_step(h, u, torch.exp(system.log_lam), system.b, system.c, system.scale)
    assert new.dtype == want_h.dtype and new.shape == want_h.shape
    assert rel(y, want_y) < TOL and rel(new, want_h) < TOL


@pytest.mark.parametrize("kind,disc,conj", CASES[:1] + CASES[2:], ids=lambda c: str(c))
def test_the_toeplitz_step_runs_the_kernel_with_the_same_result(monkeypatch, kind, disc, conj):
    """toeplitz/step.py's prefill and steps with the kernel switched on (as on a GPU) and off."""
    p = _params(kind, disc, conj, channels=5, state=10)
    u = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(4))
    kw = dict(kind=kind, params=p, disc=disc, conj=conj, algorithm="fft")

    def run():
        y, st = toeplitz_step.prefill(toeplitz_mix, (u[:, :4],), kw)
        ys = [y]
        for t in range(4, 9):
            y, st = toeplitz_step.step(toeplitz_mix, (u[:, t:t + 1],), kw, st, t)
            ys.append(y)
        return torch.cat(ys, dim=-2), st["h"]

    with torch.no_grad():
        want, want_h = run()
        monkeypatch.setattr(torch_impl, "diag_kernel_wanted", lambda x, h: True)
        got, got_h = run()
    assert rel(got, want) < TOL and rel(got_h, want_h) < TOL


def test_the_kernel_is_wanted_only_on_a_gpu():
    assert not torch_impl.diag_kernel_wanted(torch.zeros(2, 3), torch.zeros(2, 3, 4, dtype=torch.complex64))
