"""Decoding through a suffix of the sequence (seqdsl/ir/decode_window.py has the rules).

Three pieces, in the signatures of :mod:`codegen.torch.decode_families`:

- the **window** slot of ``rt.last_rows(x, axis, M)`` (``x[:, N - M:]``): the last M − 1 rows
  of ``x`` along ``axis``, [B, M − 1, ...]; a step appends the new row and returns the M rows a
  forward at the new length would take. A tensor without the batch axis (a position table,
  detail ``"shared"``: the same for every sequence, as all sequences of a batch are at one
  position) is kept once per sequence, so that the state batches and selects like the others;
- the **window softmax**: queries are the window's M rows, keys every position, mask
  ``causal(offset = N − M)``: a KV cache ``k`` [..., N, Dk], ``v`` [..., N, Dv] of every
  position (the first query of the window sees the first N − M + 1 keys); a step scores the
  M queries (at positions t − M + 1 … t) against the t + 1 keys: O(M · t · d) per token;
- **re-run** calls (detail ``"rerun"``, any kind): a stateful runtime below the window runs
  its plain forward on the window's rows, keeping nothing.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from codegen.softmax.torch_impl import masked_softmax, softmax_attention
from codegen.torch import decode
from codegen.torch import decode_buffer as buf
from seqdsl.errors import SeqError

_SOFTMAX = inspect.signature(softmax_attention)


@functools.cache
def _signature(fn) -> inspect.Signature:
    return inspect.signature(fn)


def window_prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    a = decode.arguments(_signature(fn), args, kw)
    x, axis, size = a["x"], a["axis"], a["size"]
    if x.shape[axis] < size:
        raise SeqError(f"the prompt is shorter than the window: the model reads the last {size} positions "
                       f"(x[:, N - {size}:]) and the prompt has {x.shape[axis]}; give at least {size} tokens")
    out = fn(**a)
    rows = x.narrow(axis, x.shape[axis] - (size - 1), size - 1)
    if detail == "shared":              # one table for every sequence: a copy per sequence
        batch = decode.batch_size()
        rows = rows.unsqueeze(0).repeat(batch, *(1,) * rows.dim())
    return out, {"x": rows}


def window_step(fn, args: tuple, kw: dict, state: dict[str, Tensor], t: int, detail: str = "") -> tuple:
    a = decode.arguments(_signature(fn), args, kw)
    x, axis, size = a["x"], a["axis"], a["size"]
    kept = state["x"][0] if detail == "shared" else state["x"]
    window = torch.cat([kept, x], dim=axis)
    window = window.narrow(axis, window.shape[axis] - size, size)
    rows = window.narrow(axis, 1, size - 1)
    if detail == "shared":
        rows = rows.unsqueeze(0).repeat(state["x"].shape[0], *(1,) * rows.dim())
    return window, {"x": rows}


def softmax_prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    a = decode.arguments(_SOFTMAX, args, kw)
    n, total = a["k"].shape[-2], decode.max_tokens()         # every key, in buffers that grow (decode_buffer.py)
    rows = buf.capacity(n + 1, None, None if total is None else max(total, n + 1))
    return fn(**a), buf.slot({"k": buf.hold(a["k"], -2, rows), "v": buf.hold(a["v"], -2, rows)})


def softmax_step(fn, args: tuple, kw: dict, cache: dict[str, Tensor], t: int, detail: str = "") -> tuple:
    """The window's queries (positions t − Mq + 1 … t) against every key so far. The call's
    mask was made with the step's length (1) for N; the plan checked it is exactly
    ``causal(offset = N − M)``, so the kept keys are j ≤ i at absolute positions."""
    a = decode.arguments(_SOFTMAX, args, kw)
    q = a["q"]
    kb, vb = buf.append(cache, "k", a["k"], -2), buf.append(cache, "v", a["v"], -2)   # written in place
    k, v = kb.view, vb.view
    nq, total = q.shape[-2], k.shape[-2]
    i = torch.arange(t + 1 - nq, t + 1, device=q.device)[:, None]
    j = torch.arange(total, device=q.device)[None, :]
    s = torch.matmul(q, k.transpose(-1, -2)) * a["scale"]                 # [..., Mq, t + 1]
    if a["cap"] is not None:
        s = a["cap"] * torch.tanh(s / a["cap"])
    return torch.matmul(masked_softmax(s, j <= i), v), buf.slot({"k": kb, "v": vb})


def rerun(prefill, step):
    """A family's (prefill, step), with the plain call for slots marked ``"rerun"``."""
    def pre(fn, args, kw, detail=""):
        return (fn(*args, **kw), {}) if detail == "rerun" else prefill(fn, args, kw, detail)

    def one(fn, args, kw, state, t, detail=""):
        return (fn(*args, **kw), {}) if detail == "rerun" else step(fn, args, kw, state, t, detail)
    return pre, one
