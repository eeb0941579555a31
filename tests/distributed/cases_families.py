"""The per-family cases (run inside the processes of test_families.py)."""

from __future__ import annotations

import torch

from codegen import masks as M
from codegen.distributed import softmax as dsm
from codegen.distributed.context import active
from codegen.softmax import torch_impl as sm

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_dist_harness", pathlib.Path(__file__).with_name("harness.py"))
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


def _qkv(B, Hh, N, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, Hh, N, D, generator=g, dtype=dtype) for _ in range(3)]


def softmax_case(mask, heads=4, n=63, layout="contiguous", strategy="ring", cap=None, bias=None):
    def fn(group):
        q, k, v = _qkv(2, heads, n, 8)
        kw = dict(scale=8 ** -0.5, cap=cap, bias=bias)
        ref = lambda q, k, v: sm.softmax_attention(q, k, v, mask, algorithm="materialized", **kw)  # noqa: E731
        dst = lambda q, k, v: dsm.softmax_attention(q, k, v, mask, sp=active(), **kw)  # noqa: E731
        return H.compare(ref, dst, {"q": (q, 2), "k": (k, 2), "v": (v, 2)}, group, layout, strategy)
    return fn


SOFTMAX = [
    ("full", M.Full()), ("causal", M.Causal(0)), ("causal-window", M.And(M.Causal(0), M.Window(9))),
    ("local", M.Local(16)), ("strided|window", M.Or(M.Strided(5), M.Window(4))),
    ("global|window", M.Or(M.Global(3), M.Window(6))), ("random", M.RandomBlocks(2, block=8, seed=3, per_head=True)),
]


def cases() -> list:
    out = []
    for P in (2, 4):
        for name, mask in SOFTMAX:
            for layout in ("contiguous", "zigzag"):
                out.append((f"softmax-ring-{name}-{layout}-P{P}", P, softmax_case(mask, layout=layout)))
            if not mask.lead(4):
                out.append((f"softmax-ulysses-{name}-P{P}", P, softmax_case(mask, strategy="ulysses")))
        out.append((f"softmax-ring-cap-alibi-P{P}", P, softmax_case(M.Causal(0), cap=5.0, bias=("alibi", None))))
        out.append((f"softmax-ulysses-cap-alibi-P{P}", P, softmax_case(M.Causal(0), cap=5.0, bias=("alibi", None),
                                                                     strategy="ulysses")))
    return out


def main() -> dict:
    return H.run_cases(cases())
