"""Hand-written (not generated) helpers of the generated linear-attention Triton sections
(``triton_gen.py``): device check, scratch buffers, block sizes, broadcasting to a flat
batch. The generated files import this module as ``lx``."""

from __future__ import annotations

import os

import torch
import triton

from codegen.linear.features import feature_map  # noqa: F401  (re-exported for the generated sections)

#: tests set this (or SEQDSL_TRITON_NAN_SCRATCH=1): every buffer a kernel writes then starts as
#: NaN, so an element that no program writes shows in the result instead of stale memory
NAN_SCRATCH = False
#: value widths up to this run the sequential in-register scan (``scan`` kernels) instead of the
#: chunked ones: the chunked kernels pad the value block to 16 (tl.dot's minimum) and their C×C
#: scores cost far more than a state of F × V ≤ F × 8 (Mamba's selective scan: F = 16, V = 1)
SCAN_MAX_V = 8

_NO_DEVICE = "Triton kernels need a CUDA device; on a CPU set TRITON_INTERPRET=1 before importing seqdsl"


def check_device(*tensors: torch.Tensor | None) -> None:
    """Raise a clear error for CPU tensors unless Triton's interpreter is on."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise RuntimeError(_NO_DEVICE)


def scratch(*shape: int, device: torch.device) -> torch.Tensor:
    """An fp32 buffer that a kernel fills (NaN-filled under NAN_SCRATCH)."""
    if NAN_SCRATCH or os.environ.get("SEQDSL_TRITON_NAN_SCRATCH") == "1":
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device)


def block(n: int, lo: int = 1, hi: int | None = None) -> int:
    """The power of two ≥ n (at least ``lo``, at most ``hi``): a tile width."""
    b = max(lo, triton.next_power_of_2(max(n, 1)))
    return b if hi is None else min(b, max(lo, hi))


def chunk_size(chunk: int, lo: int = 16, hi: int = 64) -> int:
    """The kernel's chunk: the power of two ≤ ``chunk`` within [lo, hi] (tl.arange and tl.dot
    need powers of two ≥ 16)."""
    c = lo
    while c * 2 <= min(chunk, hi):
        c *= 2
    return c


def flat(x: torch.Tensor, batch: torch.Size, tail: tuple[int, ...]) -> torch.Tensor:
    """x broadcast to [*batch, *tail], then [prod(batch), *tail], contiguous fp32. Autograd sums
    the gradient back over the broadcast dims."""
    return x.float().expand(*batch, *tail).reshape(-1, *tail).contiguous()


def dense_gate(decay):
    """A factored per-channel log-gate (``codegen.linear.chunked.OuterGate``: rate ⊗ channel) as
    one [..., N, F] tensor; anything else unchanged (duck-typed: no import of the runtime)."""
    return decay.materialize() if hasattr(decay, "materialize") else decay


def reverse_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_{s ≥ t} x_s along ``dim``."""
    return torch.flip(torch.cumsum(torch.flip(x, (dim,)), dim=dim), (dim,))
