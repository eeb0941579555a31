"""Mixture of experts: Switch-style routing with capacity, and its auxiliary losses.

What ``moe(x, expert, experts = E, top_k, capacity, balance = α, z_loss = β)`` runs, per
layer, over the T tokens of the call (Fedus, Zoph & Shazeer 2021, "Switch Transformers"):

- router: p = softmax(x W_rᵀ) in float32, W_r [E, D] without a bias;
- each token goes to its ``top_k`` experts, its output there scaled by p_e (Switch: top 1);
- expert capacity C = ⌈capacity · T · top_k / E⌉ tokens; an expert serves the tokens routed
  to it in the order they come (position order, as mesh-tensorflow's cumulative sum of the
  dispatch mask); a token beyond C gets nothing from that expert (the residual around the
  layer carries it on);
- load-balancing loss α · E · Σ_e f_e · P_e, with f_e the fraction of the T tokens whose
  top-k choice includes e (before capacity drops) and P_e the mean router probability of e;
- router z-loss β · mean_t (log Σ_e exp(logit_te))² (ST-MoE, Zoph et al. 2022), when β > 0.

The weighted losses of every MoE layer of a forward are kept on the module that holds the
layer and summed by ``model.aux_loss()`` (:class:`codegen.torch.runtime.SeqModule`): a
training loop adds that to its task loss; ``seqdsl run`` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from codegen.torch import runtime


def switch_route(x: torch.Tensor, router: torch.Tensor, top_k: int, capacity: float):
    """(probabilities [T, E], logits [T, E], dispatch: list per expert of (rows, slot)),
    for tokens x [T, D]; ``rows`` are the token indices an expert serves, in order."""
    logits = x.float() @ router.float().T
    probs = torch.softmax(logits, dim=-1)
    n_exp = router.shape[0]
    _, index = probs.topk(top_k, dim=-1)
    cap = max(1, math.ceil(capacity * x.shape[0] * top_k / n_exp))
    dispatch = []
    for e in range(n_exp):
        rows, slot = (index == e).nonzero(as_tuple=True)     # row-major: in token order
        dispatch.append((rows[:cap], slot[:cap]))
    return probs, logits, index, dispatch


def balance_loss(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Switch's E · Σ_e f_e · P_e (unweighted)."""
    n_exp = probs.shape[-1]
    chosen = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    fraction = chosen.mean(0)            # f_e: share of tokens sent to e
    return n_exp * (fraction * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss mean_t (logsumexp_e logits)² (unweighted)."""
    return torch.logsumexp(logits, dim=-1).square().mean()


def moe(x: torch.Tensor, router: torch.Tensor, experts: nn.ModuleList, top_k: int, capacity: float,
        owner: nn.Module, balance: float = 0.0, router_z: float = 0.0) -> torch.Tensor:
    """The MoE layer (see the module docstring); leaves its weighted losses on ``owner``."""
    shape = x.shape
    tokens = x.reshape(-1, shape[-1])
    probs, logits, index, dispatch = switch_route(tokens, router, top_k, capacity)
    out = None
    for e, expert in enumerate(experts):
        rows, slot = dispatch[e]
        if rows.numel() == 0:
            continue
        y = expert(tokens[rows].unsqueeze(0)).squeeze(0)
        if out is None:
            out = torch.zeros(tokens.shape[0], y.shape[-1], dtype=y.dtype, device=y.device)
        gate = probs[rows].gather(-1, index[rows, slot].unsqueeze(-1)).to(y.dtype)
        out = out.index_add(0, rows, y * gate)
    if out is None:     # every expert's queue empty cannot happen with T ≥ 1, but stay total
        out = torch.zeros_like(tokens)
    loss = None
    if balance:
        loss = balance * balance_loss(probs, index)
    if router_z:
        term = router_z * z_loss(logits)
        loss = term if loss is None else loss + term
    if loss is not None:
        runtime.record_aux_loss(owner, loss)
    return out.reshape(*shape[:-1], out.shape[-1])
