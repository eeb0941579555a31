"""A redrawn random feature map under sequence parallelism (run inside test_redraw.py's 2
processes): ``spectral(m, learn = gaussian, redraw = training)`` draws ε from torch's global
generator at each training call, and the ranks' generators differ (``seqdsl train`` seeds rank
r with seed + 7919·r). The group takes its first rank's draw (codegen/linear/features.py), so
the sharded training call equals one process that drew rank 0's ε."""

from __future__ import annotations

import importlib.util
import pathlib
from unittest import mock

import torch
import torch.distributed as dist

import seqdsl
import seqdsl.distributed as sd
from codegen.distributed.comm import all_gather_into
from codegen.linear import features

_spec = importlib.util.spec_from_file_location("_dist_harness", pathlib.Path(__file__).with_name("harness.py"))
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)

SRC = """
dim B = 2, H = 2, N = 33, Dh = 8
model m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) -> [B, H, N, Dh] {
  return mix(q, k, v, feature = spectral(6, smoothing = 0.36, learn = gaussian, heads = H, redraw = training),
             mask = causal(), norm = sum)
}
"""
SEED = 100          # rank r's stream: SEED + 7919·r, as seqdsl train seeds it


def _noise(model) -> torch.Tensor:
    (eps,) = [b for name, b in model.named_buffers() if b.dtype.is_floating_point]
    return eps


def _run(shared: bool) -> dict[str, float]:
    """Errors of the sharded training call against one process with rank 0's ε (``shared``
    False: each rank keeps its own draw, the bug, as a control that the comparison can fail)."""
    rank = dist.get_rank()
    model = seqdsl.load(SRC).train()
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(2, 2, 33, 8, generator=g) for _ in range(3)]
    W = torch.randn(2, 2, 33, 8, generator=g)
    share = features._share_draw if shared else (lambda noise: None)
    torch.manual_seed(SEED + 7919 * rank)            # each rank its own stream (N = 33: 17 + 16 rows)
    with sd.sequence_parallel(), mock.patch.object(features, "_share_draw", share):
        local = [sd.shard(x, 2).requires_grad_() for x in qkv]
        out = model(*local)
        (out * sd.shard(W, 2)).sum().backward()
    sd.reduce_gradients(model)
    eps = _noise(model).clone()
    every = torch.empty(dist.get_world_size(), *eps.shape)
    all_gather_into(every, eps, None)
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)                          # one process, drawing what rank 0 drew
    full = [x.clone().requires_grad_() for x in qkv]
    ref = model(*full)
    (ref * W).sum().backward()
    errs = {"out": H._err(sd.shard(ref, 2), out, None, True),
            "eps spread": float((every - every[0]).abs().max())}
    for i, (x, xl) in enumerate(zip(full, local)):
        errs[f"grad {'qkv'[i]}"] = H._err(sd.shard(x.grad, 2), xl.grad, None, True)
    for k, p in model.named_parameters():
        errs[f"grad {k}"] = H._err(p.grad, grads[k], None, False)
    return errs


def main() -> dict:
    return {"shared": _run(True), "control": _run(False)}
