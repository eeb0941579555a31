"""AdamW with decoupled weight-decay groups and a linear-warmup, cosine-decay schedule."""

from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, no_decay: dict[str, str], lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """Two groups, in ``named_parameters`` order: with decay, and without (``no_decay``)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps (from 1/warmup to 1), then cosine decay to
    ``min_ratio`` at the last step (safari's synthetic runs decay to 0.1 × lr)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup - 1)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
