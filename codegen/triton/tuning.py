"""Launch configurations of generated kernels: autotuned on a GPU, one configuration on a CPU.

The generated forward kernels carry ``@tt.autotune(key=[...])``. On a GPU, Triton times
every configuration of :data:`CONFIGS` the first time a kernel meets a new key (the sizes
named in ``key``) and keeps the fastest. Through the interpreter (TRITON_INTERPRET=1, on
a CPU) autotuning several configurations is not possible, so the first is used alone.
Only kernels that write their outputs without reading them are autotuned (a timed rerun
must not change the result); backward kernels that accumulate with atomics are not.
"""

from __future__ import annotations

import os

import triton

#: warps × pipeline stages; block sizes stay the generator's (they shape the grid)
CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3)]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def configs() -> list:
    import torch

    return CONFIGS if torch.cuda.is_available() and not interpreting() else CONFIGS[:1]


def autotune(key: list[str]):
    """``@triton.autotune`` over :func:`configs`, keyed by the named size arguments."""
    return triton.autotune(configs=configs(), key=key)
