"""Growing decoding state: the rows of a KV cache (or an input history) in a preallocated buffer.

A step used to append its key with ``torch.cat`` — a copy of the whole cache per token, O(T)
memory traffic on top of the attention's own O(T) reads. Here each growing tensor is a view
of rows ``[lo, hi)`` of a buffer with spare capacity along the sequence axis:

- a step writes its rows at ``hi`` in place and returns a view one row longer; trimming (the
  keys a sliding window or a block no longer sees) moves ``lo`` — no copy;
- when the buffer is full, the kept rows are copied into a new buffer of twice their number
  (amortised O(1) copies per token), at most twice the mask's bound on the kept rows (a
  window of W keeps ≤ W, so its buffer never exceeds 2W rows), or the capacity asked for by
  ``prefill(..., max_tokens=...)``.

A state is never modified by a step (the API's promise): rows past a state's ``hi`` belong to
whichever step wrote them first. The buffer's ``fill`` (shared by every state cut from it)
is the end of the rows written; a step from a state whose ``hi`` is not ``fill`` (an older
state stepped again: beam search, speculation rolled back) copies its rows to a new buffer
instead of writing over a later state's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

MIN_ROWS = 16        # the smallest buffer made when growing (a few steps without a copy)


@dataclass(frozen=True)
class Buffer:
    """Rows ``[lo, hi)`` along axis ``dim`` of ``data``; ``fill[0]``: the rows written in it."""

    data: Tensor
    dim: int
    lo: int
    hi: int
    fill: list[int]

    @functools.cached_property
    def view(self) -> Tensor:
        """The rows [lo, hi) (made once: a step reads it several times)."""
        return self.data.narrow(self.dim, self.lo, self.hi - self.lo)

    @property
    def capacity(self) -> int:
        return self.data.shape[self.dim]

    def holds(self, t: Tensor) -> bool:
        """``t`` is still this buffer's view (not a tensor put in its place)."""
        v = self.view
        return t.shape == v.shape and t.dtype == v.dtype and t.device == v.device and \
            (t.numel() == 0 or (t.data_ptr() == v.data_ptr() and t.stride() == v.stride()))


class Slot(dict):
    """One stateful layer's tensors, ``{name: tensor}``; ``buffers[name]`` for those that grow
    along the sequence (the tensor is then a view of the buffer's rows)."""

    def __init__(self, *args, buffers: dict[str, Buffer] | None = None, **kw):
        super().__init__(*args, **kw)
        self.buffers: dict[str, Buffer] = dict(buffers or {})

    def buffer(self, name: str) -> Buffer | None:
        b = self.buffers.get(name)
        return b if b is not None and b.holds(self[name]) else None

    def held_nbytes(self) -> int:
        """Bytes this layer keeps alive: whole buffers (capacity included), other tensors."""
        total = 0
        for name, t in self.items():
            b = self.buffer(name)
            total += (b.data if b is not None else t).numel() * t.element_size()
        return total


def capacity(need: int, bound: int | None = None, hint: int | None = None) -> int:
    """Rows of a new buffer that must hold ``need`` rows now: the ``hint`` (rows the caller
    expects to need) when given, else twice ``need`` — never above twice ``bound`` (the most
    rows the state ever keeps), never below ``need``."""
    rows = hint if hint is not None else max(2 * need, MIN_ROWS)
    if bound is not None:
        rows = min(rows, max(2 * bound, MIN_ROWS))
    return max(rows, need)


def hold(t: Tensor, dim: int, rows: int) -> Buffer:
    """``t`` copied into a new buffer of ``rows`` rows along ``dim`` (rows ≥ t's)."""
    dim = dim % t.dim()
    shape = list(t.shape)
    shape[dim] = rows
    data = torch.empty(shape, dtype=t.dtype, device=t.device)
    n = t.shape[dim]
    data.narrow(dim, 0, n).copy_(t)
    return Buffer(data, dim, 0, n, [n])


def append(slot: dict, name: str, new: Tensor, dim: int, bound: int | None = None) -> Buffer:
    """``slot[name]`` followed by ``new`` along ``dim``: written in place when ``slot`` holds the
    newest rows of a buffer with room, else copied into a new buffer (``capacity``)."""
    old = slot[name]
    dim = dim % old.dim()
    b = slot.buffer(name) if isinstance(slot, Slot) else None
    n = new.shape[dim]
    if b is not None and b.hi == b.fill[0] and b.hi + n <= b.capacity:
        b.data.narrow(dim, b.hi, n).copy_(new)
        b.fill[0] = b.hi + n
        return Buffer(b.data, dim, b.lo, b.hi + n, b.fill)
    keep = old.shape[dim]
    shape = list(old.shape)
    shape[dim] = capacity(keep + n, bound)
    data = torch.empty(shape, dtype=old.dtype, device=old.device)
    data.narrow(dim, 0, keep).copy_(old)
    data.narrow(dim, keep, n).copy_(new)
    return Buffer(data, dim, 0, keep + n, [keep + n])


def trim(b: Buffer, drop: int) -> Buffer:
    """The same buffer without its first ``drop`` rows (no copy)."""
    drop = max(0, min(drop, b.hi - b.lo))
    return b if drop == 0 else Buffer(b.data, b.dim, b.lo + drop, b.hi, b.fill)


def slot(entries: dict[str, Tensor | Buffer]) -> Slot:
    """A layer's state from its tensors and buffers (a buffer stands as its view)."""
    return Slot({n: e.view if isinstance(e, Buffer) else e for n, e in entries.items()},
                buffers={n: e for n, e in entries.items() if isinstance(e, Buffer)})


def remake(part: dict, fn) -> Slot:
    """``part`` with ``fn`` applied to every tensor; a buffered one keeps its room (``fn`` of its
    rows copied into a new buffer with as many rows to spare)."""
    out: dict[str, Tensor | Buffer] = {}
    for name, t in part.items():
        b = part.buffer(name) if isinstance(part, Slot) else None
        out[name] = fn(t) if b is None else hold(fn(t), b.dim, b.capacity - b.lo)
    return slot(out)


def concat(parts: list[dict]) -> Slot:
    """The parts of several sequences (as many rows each) as one batch, with the most room of theirs."""
    out: dict[str, Tensor | Buffer] = {}
    for name in parts[0]:
        rows = torch.cat([p[name] for p in parts])
        bs = [p.buffer(name) if isinstance(p, Slot) else None for p in parts]
        out[name] = rows if any(b is None for b in bs) else hold(rows, bs[0].dim, max(b.capacity - b.lo for b in bs))
    return slot(out)
