"""Positional biases of the softmax scores, evaluated at index tensors.

One definition serves the materialised path (the whole [Nq, Nk] grid) and the tiled path
(one chunk of tiles at a time): ``positional_bias(kind, table, i, j, heads)`` returns
[Hb, *broadcast(i, j)] with Hb the table's heads (or ``heads`` for default ALiBi slopes),
to be added to scores whose heads axis is dim −3.

- ``alibi``: bias = slope_h · (j − i), slopes from ``table`` [H] or the default
  2^(−8(h+1)/H) (Press et al. 2022);
- ``relative``: bias = table[h, clamp(j − i, −buckets//2, buckets//2 − 1) + buckets//2]
  with ``table`` [H, buckets] (a learned scalar per head and clipped distance).
- ``t5:<max_distance>:<bi|uni>``: bias = table[h, bucket(j − i)] with T5's log buckets
  (Raffel et al. 2020; mesh-tensorflow ``_relative_position_bucket``): for n = i − j, a
  bidirectional table gives half its buckets to keys after the query (n < 0) and uses |n|;
  a unidirectional one uses max(n, 0); with b the buckets of that half, n < b/2 is its own
  bucket, larger n fall in b/2 + ⌊log(n / (b/2)) / log(max_distance / (b/2)) · (b − b/2)⌋,
  capped at b − 1.

Indices are raw positions (i the query index, j the key index, both from 0), as in the
masks: with a causal offset the bias does not shift.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("alibi", "relative")


def t5_kind(max_distance: int, bidirectional: bool) -> str:
    """The kind string of a T5 log-bucketed bias (the options travel with the kind)."""
    return f"t5:{int(max_distance)}:{'bi' if bidirectional else 'uni'}"


def t5_options(kind: str) -> tuple[int, bool] | None:
    """(max_distance, bidirectional) of a ``t5:…`` kind, else None."""
    if not kind.startswith("t5:"):
        return None
    _, dist, way = kind.split(":")
    return int(dist), way == "bi"


def t5_bucket(d: Tensor, buckets: int, max_distance: int, bidirectional: bool) -> Tensor:
    """T5's bucket of the relative position d = j − i (long tensor, same shape)."""
    n = -d
    out = torch.zeros_like(n)
    if bidirectional:
        buckets //= 2
        out = out + (n < 0).long() * buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    exact = buckets // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).long()
    large = large.clamp(max=buckets - 1)
    return out + torch.where(n < exact, n, large)


def normalize_bias(bias) -> tuple[str, Tensor | None] | None:
    """``None``, ``(kind, table)`` or ``kind`` → ``(kind, table)``; checks the kind and shape."""
    if bias is None:
        return None
    kind, table = (bias, None) if isinstance(bias, str) else tuple(bias)
    if kind not in KINDS and t5_options(kind) is None:
        raise ValueError(f"unknown positional bias {kind!r} (known: {', '.join(KINDS)})")
    if kind != "alibi" and (table is None or table.dim() != 2):
        raise ValueError("a relative bias needs its table [heads, buckets]")
    if kind == "alibi" and table is not None and table.dim() != 1:
        raise ValueError(f"ALiBi slopes are a vector [heads], got shape {tuple(table.shape)}")
    return kind, table


def alibi_slopes(heads: int, device=None, dtype=torch.float32) -> Tensor:
    """2^(−8(h+1)/H) for h = 0..H−1."""
    h = torch.arange(heads, device=device, dtype=torch.float64)
    return torch.exp2(-8.0 * (h + 1) / heads).to(dtype)


def bias_heads(bias: tuple[str, Tensor | None] | None, heads: int) -> int:
    if bias is None:
        return 1
    kind, table = bias
    hb = heads if table is None else table.shape[0]
    if hb not in (1, heads):
        raise ValueError(f"{kind} bias has {hb} heads, the attention {heads}")
    return hb


def positional_bias(kind: str, table: Tensor | None, i: Tensor, j: Tensor, heads: int, dtype=torch.float32
                    ) -> Tensor:
    """[Hb, *broadcast(i, j)]: the bias at query positions ``i`` and key positions ``j``."""
    d = j - i
    ones = (1,) * d.dim()
    if kind == "alibi":
        slopes = alibi_slopes(heads, d.device, dtype) if table is None else table.to(dtype)
        return slopes.view(-1, *ones) * d.to(dtype)
    t5 = t5_options(kind)
    if t5 is not None:
        return table.to(dtype)[:, t5_bucket(d, table.shape[-1], *t5)]
    half = table.shape[-1] // 2
    return table.to(dtype)[:, d.clamp(-half, half - 1) + half]
