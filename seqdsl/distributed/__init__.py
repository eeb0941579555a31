"""Sequence parallelism: one sequence spread over the ranks of a torch.distributed group.

Importable without a process group; the functions that communicate need one
(:func:`init` under ``torchrun``, or :func:`launch` for local processes).

    import seqdsl, seqdsl.distributed as sd
    sd.init()                                        # under torchrun
    model = seqdsl.load("examples/models/mamba.seq")
    x = sd.shard(tokens, dim=1)                      # this rank's rows of the sequence
    with sd.sequence_parallel():
        y = model(x)                                 # every mixer runs its distributed algorithm
    logits = sd.gather(y, dim=1)                     # the whole sequence, in order

The algorithms live in ``codegen/distributed`` (one file per mixer family); the strategy
of each family and what it sends: docs/distributed.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from codegen.distributed.context import SequenceParallel, active, sequence_parallel
from codegen.distributed.layout import LAYOUTS, Layout
from seqdsl.distributed.launch import init, launch

__all__ = ["init", "launch", "sequence_parallel", "active", "shard", "gather", "Layout", "LAYOUTS",
           "SequenceParallel", "reduce_gradients", "preferred_layout"]


def _sp(group, layout: str | None) -> SequenceParallel:
    cur = active()
    if layout is None:
        layout = cur.layout if cur is not None and (group is None or cur.group is group) else "contiguous"
    return SequenceParallel(group if group is not None or cur is None else cur.group, layout)


def shard(x: torch.Tensor, dim: int = 1, group=None, layout: str | None = None) -> torch.Tensor:
    """This rank's rows of the whole sequence ``x`` along ``dim`` (every rank passes the same
    ``x``). ``layout``: contiguous | zigzag (default: the active ``sequence_parallel``'s)."""
    sp = _sp(group, layout)
    lay = Layout(x.shape[dim], sp.size, sp.layout)
    return x.index_select(dim, lay.positions(sp.rank, x.device))


def gather(x: torch.Tensor, dim: int = 1, group=None, layout: str | None = None) -> torch.Tensor:
    """The whole sequence from every rank's rows ``x`` along ``dim``, in global order, on every
    rank (the inverse of :func:`shard`; differentiable: a rank's rows get its copy's gradient)."""
    from codegen.distributed.comm import gather_sequence

    sp = _sp(group, layout)
    return gather_sequence(x, sp, sp.layout_of(x.shape[dim]), dim)


def reduce_gradients(module: torch.nn.Module, group=None) -> None:
    """Sum every parameter's gradient over the group: each rank's backward gives the part of
    a weight's gradient that its rows contribute (as in data parallelism)."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)


def preferred_layout(graph) -> str:
    """The layout a checked graph (``seqdsl.check(...).graph``) is best split with: ``zigzag``
    when a softmax mixer has a causal mask (every rank then has the same work under the
    mask), else ``contiguous`` (one segment per rank: state passing merges fewer summaries)."""
    from seqdsl.ir import mix as M
    from seqdsl.ir.graph import OpKind

    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.nodes():
            if node.attr("body") is not None:
                stack.append(node.attr("body"))
            if node.kind == OpKind.MIX and node.spec.family == "softmax" and any(
                    isinstance(leaf, M.Causal) for leaf in M.mask_leaves(node.spec.mask)):
                return "zigzag"
    return "contiguous"
