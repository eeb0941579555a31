"""Decoding for the softmax family: a key/value cache (issue 13).

State of one mixer: ``k`` [..., T, Dk] and ``v`` [..., T, Dv], the keys and values of the
last T positions (``ids`` [..., T] too when the mask compares hash buckets). The cache
holds only the keys a later query can still see, read from the mask's top-level terms:

- ``window(W)`` (``causal() & window(W)``): the last W − 1 keys (W once the new one is in);
  over blocks (``window(w, block=b)``): the keys from block ⌊t/b⌋ − w + 1 on;
- ``local(C)`` (block-local, Mega-chunk): the keys of the current block of C;
- otherwise (plain causal, strided, butterfly, global tokens, buckets): every key.

A step appends the new key and value, evaluates the mask's predicate and the positional
bias at the absolute positions (query t, keys t − T … t), and runs one row of softmax:
O(T · d) per token.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from codegen import masks as M
from codegen.softmax.scores import normalize_bias, positional_bias
from codegen.softmax.torch_impl import masked_softmax, softmax_attention
from codegen.torch.decode import arguments

_SIG = inspect.signature(softmax_attention)


def _bind(args: tuple, kw: dict) -> dict:
    return arguments(_SIG, args, kw)


def first_kept(mask: M.Mask, i: int) -> int:
    """The first key position that query ``i`` or a later one can see (0: all may be)."""
    lo = 0
    for term in M.conjuncts(M.simplify(mask)):
        if isinstance(term, M.Window) and term.size > 0:
            lo = max(lo, (i // term.block - term.size + 1) * term.block)
        elif isinstance(term, M.Local):
            lo = max(lo, i // term.size * term.size)
    return max(lo, 0)


def _has_buckets(mask: M.Mask) -> bool:
    if isinstance(mask, (M.And, M.Or)):
        return _has_buckets(mask.a) or _has_buckets(mask.b)
    return isinstance(mask, M.Buckets)


def _with_ids(mask: M.Mask, ids: Tensor) -> M.Mask:
    """The mask with its buckets' ids replaced by those of every cached position."""
    if isinstance(mask, (M.And, M.Or)):
        return type(mask)(_with_ids(mask.a, ids), _with_ids(mask.b, ids))
    return M.Buckets(ids) if isinstance(mask, M.Buckets) else mask


def _ids(mask: M.Mask) -> Tensor | None:
    if isinstance(mask, (M.And, M.Or)):
        a = _ids(mask.a)
        return a if a is not None else _ids(mask.b)
    return mask.ids if isinstance(mask, M.Buckets) else None


def _trim(cache: dict[str, Tensor], lo: int, start: int) -> dict[str, Tensor]:
    """Drop the cached positions before ``lo``; the cache starts at position ``start``."""
    cut = max(0, lo - start)
    return {name: t[..., cut:, :] if name != "ids" else t[..., cut:] for name, t in cache.items()}


def prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    a = _bind(args, kw)
    out = fn(**a)
    mask = M.Full() if a["mask"] is None else a["mask"]
    n = a["k"].shape[-2]
    cache = {"k": a["k"], "v": a["v"]}
    if _has_buckets(mask):
        cache["ids"] = _ids(mask)
        return out, cache                  # bucket ids index every position: the whole cache stays
    return out, _trim(cache, first_kept(mask, n), 0)


def step(fn, args: tuple, kw: dict, cache: dict[str, Tensor], t: int, detail: str = "") -> tuple[Tensor, dict]:
    """One query at position ``t`` against the cache and its own key."""
    a = _bind(args, kw)
    q, mask, scale = a["q"], (M.Full() if a["mask"] is None else a["mask"]), a["scale"]
    k = torch.cat([cache["k"], a["k"]], dim=-2)
    v = torch.cat([cache["v"], a["v"]], dim=-2)
    total = k.shape[-2]
    start = t + 1 - total
    new = {"k": k, "v": v}
    i = torch.full((1, 1), t, device=q.device)
    j = torch.arange(start, t + 1, device=q.device)[None, :]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    heads = batch[-1] if batch else 1                                  # as softmax_attention reads it
    if _has_buckets(mask):
        new["ids"] = torch.cat([cache["ids"], _ids(mask)], dim=-1)
        mask = _with_ids(mask, new["ids"])          # the whole history is cached: start == 0
    s = torch.matmul(q, k.transpose(-1, -2)) * scale                   # [..., 1, T]
    bias = normalize_bias(a["bias"])
    if bias is not None:
        s = s + positional_bias(bias[0], bias[1], i, j, heads, s.dtype)
    if a["cap"] is not None:
        s = a["cap"] * torch.tanh(s / a["cap"])
    keep = None if isinstance(M.simplify(mask), M.Full) else mask.keep(i, j, t + 1, t + 1, heads)
    out = torch.matmul(masked_softmax(s, keep), v)
    if "ids" in new:
        return out, new
    return out, _trim(new, first_kept(mask, t + 1), start)

