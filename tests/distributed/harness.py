"""What the distributed tests run inside their processes (loaded by path in each rank by
``seqdsl.distributed.launch``; test modules only launch and read the results).

``compare`` runs a function on the whole inputs in one process (the reference) and its
sequence-parallel form on every rank's shard, with the same loss Σ out ⊙ W, and returns
the relative errors ‖ref − out‖ / ‖ref‖ of the output and of every input's gradient,
summed over the ranks (a sharded input: its rows; a replicated one, a weight: the sum of
the ranks' gradients, as ``reduce_gradients`` forms it).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

import seqdsl.distributed as sd


def _err(ref: torch.Tensor, out: torch.Tensor, group, reduce: bool) -> float:
    ref, out = ref.detach().to(torch.float64), out.detach().to(torch.float64)
    if ref.is_complex():
        ref, out = torch.view_as_real(ref), torch.view_as_real(out)
    t = torch.stack([((ref - out) ** 2).sum(), (ref ** 2).sum()])
    if reduce:
        dist.all_reduce(t, group=group)
    return float(t[0].sqrt() / t[1].sqrt().clamp_min(1e-300))


def compare(fn_ref, fn_dist, inputs: dict, group=None, layout: str = "contiguous", softmax: str = "auto",
            out_dim: int = -2, seed: int = 0) -> dict[str, float]:
    """``inputs``: name → (tensor, sequence dim or None). Errors by name ('out', 'grad <name>')."""
    full = {k: t.detach().clone().requires_grad_(t.is_floating_point()) for k, (t, _) in inputs.items()}
    ref = fn_ref(**full)
    g = torch.Generator().manual_seed(seed + 1)
    W = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
    (ref * W).sum().backward()
    with sd.sequence_parallel(group, layout=layout, softmax=softmax):
        local = {}
        for k, (t, dim) in inputs.items():
            x = t.detach() if dim is None else sd.shard(t.detach(), dim)
            local[k] = x.clone().requires_grad_(t.is_floating_point())
        out = fn_dist(**local)
        wl = sd.shard(W, out_dim % W.dim())
        (out * wl).sum().backward()
    errs = {"out": _err(sd.shard(ref, out_dim % ref.dim(), group, layout), out, group, True)}
    for k, (t, dim) in inputs.items():
        if not t.is_floating_point():
            continue
        if dim is None:
            grad = local[k].grad.clone()
            dist.all_reduce(grad, group=group)
            errs[f"grad {k}"] = _err(full[k].grad, grad, group, False)
        else:
            errs[f"grad {k}"] = _err(sd.shard(full[k].grad, dim, group, layout), local[k].grad, group, True)
    return errs


def run_cases(cases: list) -> dict[str, object]:
    """Run ``(name, ranks, fn)`` cases: ``fn(group)`` on a group of ``ranks`` (2 or 4) ranks. With
    4 processes the two-rank cases alternate between ranks {0, 1} and {2, 3}, so that both
    pairs work at once. Returns name → errors dict (and ``_seconds``: name → time)."""
    world = dist.get_world_size()
    rank = dist.get_rank()
    pairs = [list(range(i, i + 2)) for i in range(0, world - 1, 2)] if world > 2 else [[0, 1]]
    pair_groups = [dist.new_group(p) if world > 2 else None for p in pairs]   # every rank creates each
    out: dict[str, object] = {}
    twos = 0
    for name, ranks, fn in cases:
        if ranks > world:
            continue
        if ranks == 2:
            which = twos % len(pairs)
            twos += 1
            if rank not in pairs[which]:
                continue
            group = pair_groups[which]
        else:
            group = None
        t0 = time.perf_counter()
        out[name] = fn(group)            # an exception ends this rank, and launch() reports it
        out.setdefault("_seconds", {})[name] = time.perf_counter() - t0
    return out


def _seq_axis(x: torch.Tensor) -> int:
    """The sequence axis of an entry's tensors: 1 of [B, N], −2 of [B, .., N, D]."""
    return 1 if x.dim() == 2 else x.dim() - 2


def compare_module(module: torch.nn.Module, inputs: tuple, group=None, layout: str = "contiguous",
                   seed: int = 0) -> dict[str, float]:
    """A module run whole on one process against the same module run on every rank's shard of
    ``inputs`` (along their sequence axis) inside ``sequence_parallel``. Errors of the
    output, of every input that is floating point, and of all the weights' gradients together
    ('grad weights', the ranks' gradients summed) and the worst single weight's."""
    module.eval()                                          # no dropout: both runs see the same function
    full = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    ref = module(*full)
    W = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=ref.dtype)
    (ref * W).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    with sd.sequence_parallel(group, layout=layout):
        local = [sd.shard(x.detach(), _seq_axis(x)).clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = module(*local)
        out_dim = _seq_axis(ref)
        replicated = out.shape == ref.shape      # a classifier's logits: the same on every rank
        (out * (W if replicated else sd.shard(W, out_dim))).sum().backward()   # each rank the same loss
    sd.reduce_gradients(module, group)
    errs = {"out": _err(ref if replicated else sd.shard(ref, out_dim, group, layout), out, group, True)}
    for i, (x, xl) in enumerate(zip(full, local)):
        if x.is_floating_point():
            errs[f"grad input {i}"] = _err(sd.shard(x.grad, _seq_axis(x), group, layout), xl.grad, group, True)
    names = sorted(ref_grads)
    if not names:
        return errs
    got = {k: p.grad for k, p in module.named_parameters()}
    missing = [k for k in names if got.get(k) is None]
    if missing:
        raise AssertionError(f"no gradient on the ranks for {missing}")
    errs["grad weights"] = _err(torch.cat([ref_grads[k].flatten() for k in names]),
                                torch.cat([got[k].flatten() for k in names]), group, False)
    # each weight against max(its own norm, 1e-3 × the norm of all): a gradient that is zero in
    # exact arithmetic (a key bias under softmax) is rounding noise on both sides
    floor = 1e-3 * float(torch.cat([ref_grads[k].flatten() for k in names]).double().norm())

    def one(k: str) -> float:
        d = float((ref_grads[k].double() - got[k].double()).norm())
        return d / max(float(ref_grads[k].double().norm()), floor, 1e-300)
    worst = max(names, key=one)
    errs[f"grad worst weight ({worst})"] = one(worst)
    return errs
