"""The fused decoding step (codegen/linear/step_kernel.py) against the torch step, in Triton's
interpreter (fp32, tiny sizes): S' = a ⊙ S + φ(k)ᵀv, o = φ(q)S' — without decay, with a decay
per head, per token and per key feature, with the normaliser column of norm = "sum", F and V
not multiples of the kernel's blocks (37 features over blocks of 32, 45 values), leading
dims that only some operands have. Forward only: the kernel serves steps under no_grad
(the torch loop runs whenever a gradient is wanted)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")
pytest.importorskip("triton", reason="the step kernel is a Triton kernel")

from codegen.linear import step as linear_step  # noqa: E402
from codegen.linear import torch_impl  # noqa: E402
from codegen.linear.step_kernel import fused_step  # noqa: E402
from codegen.linear.torch_impl import linear_attention  # noqa: E402

TOL = 1e-5          # fp32: one multiply-add per state entry and a sum over F


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("decay", [None, "head", "channel"])
def test_fused_step_equals_the_recurrence(decay):
    g = torch.Generator().manual_seed(0)
    B, H, F, V = 2, 3, 37, 45
    q, k = torch.randn(B, 1, F, generator=g), torch.randn(1, H, F, generator=g)     # q shared by heads, k by batch
    v, s = torch.randn(B, H, V, generator=g), torch.randn(B, H, F, V, generator=g)
    a = {None: None, "head": torch.rand(H, 1, generator=g), "channel": torch.rand(B, H, F, generator=g)}[decay]
    o, new = fused_step(q, k, v, a, s)
    want_s = (s if a is None else a[..., None] * s) + k[..., :, None] * v[..., None, :]
    assert _rel(new, want_s) < TOL
    assert _rel(o, (q[..., :, None] * want_s).sum(-2)) < TOL


@pytest.mark.parametrize("feature,norm,decay", [("identity", "none", "head"), ("elu1", "sum", None),
                                                ("identity", "none", "token"), ("identity", "none", "channel")])
def test_the_torch_step_runs_the_kernel_with_the_same_result(monkeypatch, feature, norm, decay):
    """linear/step.py's step with the kernel switched on (as on a GPU) and off: same output and
    state (feature map, normaliser column and scale stay around the kernel)."""
    g = torch.Generator().manual_seed(1)
    B, H, dk, dv = 2, 3, 9, 5
    q, k, v = (torch.randn(B, H, 1, d, generator=g) for d in (dk, dk, dv))
    f, width = dk, dv + (norm == "sum")
    kw = dict(feature=feature, norm=norm, scale=dk ** -0.5)
    if decay == "head":
        kw.update(decay=torch.tensor([0.9, 0.97, 0.99]))
    elif decay == "token":
        kw.update(decay=-torch.rand(B, H, 1, generator=g), log_decay=True)
    elif decay == "channel":
        kw.update(decay=-torch.rand(B, H, 1, dk, generator=g), log_decay=True)
    state = {"S": torch.rand(B, H, f, width, generator=g) + (norm == "sum")}
    with torch.no_grad():
        want, want_s = linear_step.step(linear_attention, (q, k, v), kw, state, 7)
        monkeypatch.setattr(torch_impl, "step_kernel_wanted", lambda fq: fq.shape[-2] == 1)
        got, got_s = linear_step.step(linear_attention, (q, k, v), kw, state, 7)
    assert got.shape == want.shape and got_s["S"].shape == want_s["S"].shape
    assert _rel(got, want) < TOL and _rel(got_s["S"], want_s["S"]) < TOL


def test_the_kernel_is_wanted_only_for_a_gpu_step_without_gradients():
    x = torch.zeros(2, 1, 4)
    assert not torch_impl.step_kernel_wanted(x)                 # a CPU tensor: the torch loop
