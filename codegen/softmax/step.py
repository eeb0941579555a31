"""Decoding for the softmax family: a key/value cache (issue 13).

State of one mixer: ``k`` [..., T, Dk] and ``v`` [..., T, Dv], the keys and values of the
last T positions (``ids`` [..., T] too when the mask compares hash buckets; ``ids1``, … for
more rounds). The cache holds only the keys a later query can still see, read from the
mask's top-level terms:

- ``window(W)`` (``causal() & window(W)``): the last W − 1 keys (W once the new one is in);
  over blocks (``window(w, block=b)``): the keys from block ⌊t/b⌋ − w + 1 on;
- ``local(C)`` (block-local, Mega-chunk): the keys of the current block of C;
- otherwise (plain causal, strided, butterfly, global tokens, buckets): every key.

The cache's tensors are views of buffers with spare rows (``codegen/torch/decode_buffer.py``):
a step writes the new key and value in place (a copy of the kept rows only when the buffer
is full; a buffer made by doubling, up to twice the mask's bound — 2W for a window — or
the ``max_tokens`` given to prefill), evaluates the mask's predicate and the positional
bias at the absolute positions (query t, keys t − T … t), and runs one row of softmax:
O(T · d) per token, with no O(T) copy.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from codegen import masks as M
from codegen.softmax.scores import normalize_bias, positional_bias
from codegen.softmax.torch_impl import masked_softmax, softmax_attention
from codegen.torch import decode
from codegen.torch import decode_buffer as buf
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


def _with_ids(mask: M.Mask, ids: list[Tensor]) -> M.Mask:
    """The mask with each of its buckets' ids (in leaf order: one per hashing round) replaced
    by those of every cached position."""
    if isinstance(mask, (M.And, M.Or)):
        return type(mask)(_with_ids(mask.a, ids), _with_ids(mask.b, ids))
    return M.Buckets(ids.pop(0)) if isinstance(mask, M.Buckets) else mask


def _ids(mask: M.Mask) -> list[Tensor]:
    """The ids of every buckets term, in leaf order (``ids``, ``ids1``, … in the cache)."""
    if isinstance(mask, (M.And, M.Or)):
        return _ids(mask.a) + _ids(mask.b)
    return [mask.ids] if isinstance(mask, M.Buckets) else []


def _id_names(n: int) -> list[str]:
    return ["ids" if r == 0 else f"ids{r}" for r in range(n)]


def kept_bound(mask: M.Mask) -> int | None:
    """The most keys a query sees from the cache, its own included (w · b for ``window(w,
    block=b)``, C for ``local(C)``); None when the cache keeps every key."""
    bound = None
    for term in M.conjuncts(M.simplify(mask)):
        if isinstance(term, M.Window) and term.size > 0:
            n = term.size * term.block
        elif isinstance(term, M.Local):
            n = term.size
        else:
            continue
        bound = n if bound is None else min(bound, n)
    return bound


def prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    """The prompt's attention, and its keys and values from the first one a later query sees,
    in buffers with room for ``max_tokens`` positions (or twice the rows kept)."""
    a = _bind(args, kw)
    out = fn(**a)
    mask = M.Full() if a["mask"] is None else a["mask"]
    n = a["k"].shape[-2]
    rows = {"k": (a["k"], -2), "v": (a["v"], -2)}
    buckets = _has_buckets(mask)
    if buckets:                            # bucket ids index every position: the whole cache stays
        ids = _ids(mask)
        rows.update({name: (t, -1) for name, t in zip(_id_names(len(ids)), ids)})
    lo = 0 if buckets else first_kept(mask, n)
    total = decode.max_tokens()
    room = buf.capacity(n - lo + 1, None if buckets else kept_bound(mask),
                        None if total is None else max(total, n + 1) - lo)
    return out, buf.slot({name: buf.hold(t.narrow(dim, lo, n - lo), dim, room) for name, (t, dim) in rows.items()})


def step(fn, args: tuple, kw: dict, cache: dict[str, Tensor], t: int, detail: str = "") -> tuple[Tensor, dict]:
    """One query at position ``t`` against the cache and its own key (written into the cache's
    buffer: no copy of the cache unless it is full)."""
    a = _bind(args, kw)
    q, mask, scale = a["q"], (M.Full() if a["mask"] is None else a["mask"]), a["scale"]
    buckets = _has_buckets(mask)
    bound = None if buckets else kept_bound(mask)
    kb, vb = buf.append(cache, "k", a["k"], -2, bound), buf.append(cache, "v", a["v"], -2, bound)
    k, v = kb.view, vb.view
    total = k.shape[-2]
    start = t + 1 - total
    i = torch.full((1, 1), t, device=q.device)
    j = torch.arange(start, t + 1, device=q.device)[None, :]
    heads = max((t.shape[-3] for t in (q, k, v) if t.dim() >= 3), default=1)   # as softmax_attention reads it
    if buckets:                                     # the whole history is cached: start == 0
        ids = _ids(mask)
        ib = {name: buf.append(cache, name, t, -1) for name, t in zip(_id_names(len(ids)), ids)}
        mask = _with_ids(mask, [b.view for b in ib.values()])
    s = torch.matmul(q, k.transpose(-1, -2)) * scale                   # [..., 1, T]
    bias = normalize_bias(a["bias"])
    if bias is not None:
        s = s + positional_bias(bias[0], bias[1], i, j, heads, s.dtype)
    if a["cap"] is not None:
        s = a["cap"] * torch.tanh(s / a["cap"])
    simple = M.simplify(mask)
    if isinstance(simple, M.Full) or (isinstance(simple, M.Causal) and simple.offset == 0):
        out = torch.matmul(torch.softmax(s, dim=-1), v)          # every cached key is visible (its own among them)
    else:
        out = torch.matmul(masked_softmax(s, mask.keep(i, j, t + 1, t + 1, heads)), v)
    if buckets:
        return out, buf.slot({"k": kb, "v": vb, **ib})
    drop = first_kept(mask, t + 1) - start                             # keys no later query sees
    return out, buf.slot({"k": buf.trim(kb, drop), "v": buf.trim(vb, drop)})
