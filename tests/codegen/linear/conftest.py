"""Helpers for the linear-family kernel tests: relative errors, and forward + gradients of a
function compared with its float64 reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")

#: fp32 kernels against float64 references: ‖ref − out‖ / ‖ref‖
FP32_TOL = 1e-4


def rel(out, ref) -> float:
    """‖ref − out‖₂ / ‖ref‖₂ in float64 (0 when both vanish)."""
    out, ref = out.detach().double(), ref.detach().double()
    denom = ref.norm()
    if denom == 0:
        return float((out - ref).norm())
    return float((out - ref).norm() / denom)


def run_with_grads(fn, inputs: dict, dtype, seed: int = 1):
    """Call fn(**inputs) in ``dtype`` (tensors that are floating point get requires_grad) and
    back-propagate fixed random cotangents through every output. Returns (outputs, grads)."""
    leaves = {}
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            leaves[name] = x.detach().to(dtype).requires_grad_(True)
        else:
            leaves[name] = x
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    loss = 0
    for o in outs:
        loss = loss + (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
    loss.backward()
    grads = {name: x.grad for name, x in leaves.items() if isinstance(x, torch.Tensor) and x.grad is not None}
    return outs, grads


def assert_close(fn, ref_fn, inputs: dict, tol: float = FP32_TOL, reference=None):
    """fn in fp32 against ref_fn in float64: every output and every input gradient."""
    outs, grads = run_with_grads(fn, inputs, torch.float32)
    ref_outs, ref_grads = reference if reference is not None else run_with_grads(ref_fn, inputs, torch.float64)
    assert len(outs) == len(ref_outs)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert torch.isfinite(o).all(), f"output {i} is not finite"
        assert rel(o, r) < tol, f"output {i}: relative error {rel(o, r):.2e}"
    assert grads.keys() == ref_grads.keys(), (sorted(grads), sorted(ref_grads))
    for name in grads:
        assert torch.isfinite(grads[name]).all(), f"gradient of {name} is not finite"
        err = rel(grads[name], ref_grads[name])
        assert err < tol, f"gradient of {name}: relative error {err:.2e}"


@pytest.fixture
def close():
    """``close(fn, ref_fn, inputs, tol=..., reference=None)``: see :func:`assert_close`."""
    return assert_close


@pytest.fixture
def relerr():
    return rel


@pytest.fixture
def grads():
    """``grads(fn, inputs, dtype)`` -> (outputs, input gradients)."""
    return run_with_grads
