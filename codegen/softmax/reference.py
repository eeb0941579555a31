"""The softmax family as its literal formula: the reference the fast paths are tested against.

    S = scale · Q Kᵀ (+ bias)          [.., Nq, Nk]
    S = cap · tanh(S / cap)            (optional soft cap)
    S[~mask] = −inf
    P = softmax(S) over keys           rows whose mask keeps no key give P = 0, hence output 0
    O = P V

Everything is computed in at least float32 (float64 stays float64), the whole N × N
score matrix in memory; biases are written out here from their definitions (ALiBi: slope_h
· (j − i) with slopes 2^(−8(h+1)/H) unless given; relative: table[h, clamp(j − i, −b/2,
b/2 − 1) + b/2]), independently of ``scores.py``. Memory traffic per (batch, head) is noted
on each line as in Triton's tutorials (N = Nq = Nk, d the head size).
"""

from __future__ import annotations

import torch
from torch import Tensor

from codegen import masks as M


def _wide(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _heads(shape: torch.Size) -> int:
    return shape[-3] if len(shape) >= 3 else 1


def reference_bias(kind: str, table: Tensor | None, nq: int, nk: int, heads: int, dtype) -> Tensor:
    """[H, Nq, Nk]: the positional bias, written out entry by entry (loops over heads)."""
    out = torch.empty(heads, nq, nk, dtype=dtype)
    d = (torch.arange(nk)[None, :] - torch.arange(nq)[:, None]).to(dtype)   # j − i
    for h in range(heads):
        if kind == "alibi":
            slope = 2.0 ** (-8.0 * (h + 1) / heads) if table is None else table[h if table.shape[0] > 1 else 0]
            out[h] = slope * d
        else:
            b = table.shape[-1]
            idx = d.long().clamp(-(b // 2), b // 2 - 1) + b // 2
            out[h] = table[h if table.shape[0] > 1 else 0].to(dtype)[idx]
    return out


def softmax_reference(q: Tensor, k: Tensor, v: Tensor, mask: M.Mask | None = None, *, scale: float,
                      bias=None, cap: float | None = None) -> Tensor:
    """The literal formula. q [..., Nq, Dk], k [..., Nk, Dk], v [..., Nk, Dv]; ``bias`` is
    None or (kind, table) as in ``softmax_attention``. Rows with no kept key return 0."""
    q, k, v = _wide(q), _wide(k), _wide(v)
    nq, nk = q.shape[-2], k.shape[-2]
    s = scale * (q @ k.transpose(-1, -2))                # read Nq·d + Nk·d, write Nq·Nk
    if bias is not None:
        kind, table = (bias, None) if isinstance(bias, str) else bias
        heads = _heads(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (nq, nk))
        if table is not None:
            table = _wide(table)
        s = s + reference_bias(kind, table, nq, nk, heads, s.dtype).to(s.device)   # read 2·Nq·Nk, write Nq·Nk
    if cap is not None:
        s = cap * torch.tanh(s / cap)                    # read Nq·Nk, write Nq·Nk
    return given_attention(s, v, mask)


def given_attention(scores: Tensor, v: Tensor, mask: M.Mask | None = None) -> Tensor:
    """softmax(mask ∘ scores) @ v; rows with no kept key return 0."""
    s, v = _wide(scores), _wide(v)
    if mask is not None:
        heads = _heads(torch.broadcast_shapes(s.shape[:-2], v.shape[:-2]) + s.shape[-2:])
        keep = mask.dense(s.shape[-2], s.shape[-1], device=s.device, heads=heads)   # write Nq·Nk (bool)
        s = torch.where(keep, s, float("-inf"))          # read 2·Nq·Nk, write Nq·Nk
    row_max = s.amax(-1, keepdim=True)                   # read Nq·Nk, write Nq
    row_max = torch.where(torch.isinf(row_max), 0.0, row_max).detach()
    e = torch.exp(s - row_max)                           # read Nq·Nk, write Nq·Nk  (masked → exp(−inf) = 0)
    total = e.sum(-1, keepdim=True)                      # read Nq·Nk, write Nq
    p = e / torch.where(total == 0, 1.0, total)          # read Nq·Nk, write Nq·Nk  (empty rows stay 0)
    return p @ v                                         # read Nq·Nk + Nk·d, write Nq·d
