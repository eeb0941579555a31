"""The tiled softmax with large scores (issue 11): forward and gradients of q, k, v within
1e-3 relative error (‖tiled − ref‖ / ‖ref‖) of the materialized path for |score| up to 1e6,
causal and sliding-window masks, on the default path (PyTorch's fused CPU kernel while the
scores allow it) and on the plain matmul chunk kernel.

Inputs: q and k hold integers, the scale is 1, so every score is an integer below 2²⁴ and
exact in float32 whatever order a kernel sums in. Both paths then see the same scores, and
the comparison measures the softmax and its backward alone, not the rounding of q·k (at
|score| = 1e6 one float32 ulp is 0.06: two kernels that round q·k differently disagree by
~6% on a near tie, the materialized one included). Keys come in groups of four that differ
by 0..3 times a small coordinate, so that every row has near ties (differences of a few
units: a softmax that is not one-hot, gradients of q and k that are not ~0) on top of
scores of the full size. Before the fix, the backward used one float32 log-sum-exp (its
rounding, |m|·2⁻²⁴, scales all of P) and the fused kernel's own recomputed scores:
errors 1e-2 at 1e4, 1e30 at 1e6.

Random (non-integer) float32 inputs with |score| ≈ 5.5e10 gave NaN gradients before: they
stay finite and the output and dv match. (dq and dk there are pure rounding noise: their
exact value is ~0 since every row is one-hot; FlashAttention's rowsum(dO ∘ O) leaves an
absolute error ~ε·|dO||V|·scale·|K| — only their finiteness is checked.)
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the softmax runtime needs torch")

from codegen import masks as M  # noqa: E402
from codegen.softmax import tiled as T  # noqa: E402
from codegen.softmax.torch_impl import softmax_attention  # noqa: E402

TOL = 1e-3
B, H, N, D = 1, 2, 257, 16
MASKS = {"causal": M.Causal(0), "sliding_window": M.Causal(0) & M.Window(48)}


def rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def integer_inputs(magnitude: float, seed: int = 0):
    """q, k of integers with max |q·k| ≈ magnitude and near ties in every row; v, dO random."""
    g = torch.Generator().manual_seed(seed)
    a = max(1, round((magnitude / (0.6 * (D - 1))) ** 0.5))       # the largest scores ≈ magnitude
    q = torch.randint(-a, a + 1, (B, H, N, D), generator=g)
    q[..., 0] = torch.randint(1, 3, (B, H, N), generator=g)       # the small coordinate: 1 or 2
    groups = torch.randint(-a, a + 1, (B, H, -(-N // 4), D), generator=g)
    groups[..., 0] = 0
    k = groups.repeat_interleave(4, dim=2)[:, :, :N].clone()
    k[..., 0] = torch.arange(N) % 4                                # a group's keys: + 0, 1, 2, 3 × q[..., 0]
    v = torch.randn(B, H, N, D, generator=g)
    do = torch.randn(B, H, N, D, generator=g)
    return q.float(), k.float(), v, do


def run(q, k, v, do, mask, algorithm, scale=1.0, block=32):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = softmax_attention(*xs, mask, scale=scale, algorithm=algorithm, block=block)
    return [out, *torch.autograd.grad(out, xs, do.to(out.dtype))]


@pytest.fixture(params=["default", "plain"])
def kernel(request, monkeypatch):
    """default: the fused CPU kernel where it applies (it hands large scores to the plain
    kernel); plain: the matmul chunk kernel only (off CPU, caps, trainable bias tables)."""
    if request.param == "plain":
        monkeypatch.setattr(T, "flash_available", lambda *_: False)
    elif not T.flash_available(torch.device("cpu"), torch.float32):
        print("this torch has no fused CPU flash-attention op: the default path is the plain kernel")
    return request.param


@pytest.mark.parametrize("magnitude", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_large_scores_match_the_materialized_path(mask, magnitude, kernel):
    q, k, v, do = integer_inputs(magnitude)
    s = q @ k.transpose(-1, -2)
    top = float(s.abs().max())
    assert magnitude / 3 < top < 2 ** 24, top                     # the scale reached, and exact in float32
    ref = run(q, k, v, do, MASKS[mask], "materialized")
    ref64 = run(q.double(), k.double(), v.double(), do.double(), MASKS[mask], "materialized")
    assert rel(ref[3], ref64[3]) < 1e-5                           # the inputs are well posed in float32
    got = run(q, k, v, do, MASKS[mask], "tiled")
    for name, a, b, b64 in zip(("out", "dq", "dk", "dv"), got, ref, ref64):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        assert b.norm() > 1e-3 * b.numel() ** 0.5, f"{name}: the reference vanishes, nothing is tested"
        assert rel(a, b) < TOL, f"{name}: relative error {rel(a, b):.2e} against the materialized path"
        assert rel(a, b64) < TOL, f"{name}: relative error {rel(a, b64):.2e} against float64"


@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_huge_random_scores_stay_finite(mask, kernel):
    g = torch.Generator().manual_seed(1)
    q, k, v, do = (torch.randn(B, H, N, D, generator=g) for _ in range(4))
    scale = 5.5e10 / float((q @ k.transpose(-1, -2)).abs().max())      # |score| up to 5.5e10
    ref = run(q, k, v, do, MASKS[mask], "materialized", scale)
    got = run(q, k, v, do, MASKS[mask], "tiled", scale)
    for name, a in zip(("out", "dq", "dk", "dv"), got):
        assert torch.isfinite(a).all(), f"{name} is not finite"
    assert rel(got[0], ref[0]) < TOL and rel(got[3], ref[3]) < TOL, (rel(got[0], ref[0]), rel(got[3], ref[3]))


def test_the_fused_kernel_hands_large_scores_to_the_plain_one(caplog):
    """Only when a gradient is wanted, and only above the limit (float32)."""
    if not T.flash_available(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no fused CPU flash-attention op (nothing to hand over)")
    from codegen.softmax import plan as P

    def flash_used(magnitude, for_backward):
        q, k, v, _ = integer_inputs(magnitude)
        plan = P.make_plan(M.simplify(MASKS["causal"]), N, N, 32, 32, H, (B, H), device=q.device)
        cfg = T.Config(plan, 1.0, None, None, True)
        return T.tiled_forward(cfg, q, k, v, None, for_backward=for_backward)[3]

    assert flash_used(1e2, True)
    assert flash_used(1e4, False)
    assert not flash_used(1e4, True)


@pytest.mark.triton
@pytest.mark.parametrize("magnitude", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("mask", list(MASKS), ids=list(MASKS))
def test_triton_kernels_with_large_scores(mask, magnitude, monkeypatch):
    """The generated Triton kernels (codegen/softmax/triton_gen.py) keep the row maximum and
    log Σ exp apart too (one float32 log-sum-exp gave 5e-3 at 1e6). Interpreted on a CPU
    (TRITON_INTERPRET=1, set by tests/conftest.py): N = 80, blocks of 32."""
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    import os

    from codegen.softmax import triton_gen as G
    from codegen.torch.load import load_source

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1: the kernels cannot run")
    monkeypatch.setenv("SEQDSL_TRITON_NAN_SCRATCH", "1")        # unwritten outputs would be NaN
    device = "cuda" if torch.cuda.is_available() else "cpu"
    header = "import math\nimport torch\nimport triton\nimport triton.language as tl\nfrom codegen import masks as M\n"
    src = header + G.generate("attn", MASKS[mask], scale=1.0, block_m=32, block_n=32)
    assert "ROWMAX" in src and "ROWLOG" in src
    attn = load_source(src, f"test_large_scores_{mask}").attn
    q, k, v, do = (x[:, :, :80].contiguous().to(device) for x in integer_inputs(magnitude))
    if device == "cuda":        # no TF32 on the scores: they would not be exact
        monkeypatch.setenv("SEQDSL_TRITON_TF32", "0")
    ref = run(q, k, v, do, MASKS[mask], "materialized")
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = attn(*xs)
    got = [out, *torch.autograd.grad(out, xs, do)]
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        assert rel(a, b) < TOL, f"{name}: relative error {rel(a, b):.2e} against the materialized path"
