"""Packed rows: several documents in one row of a batch, with their boundaries.

FlashAttention, flash-linear-attention and mamba_ssm take packed batches as ``cu_seqlens``
(cumulative document lengths); a generated module takes them as ``doc_ids`` [B, N], the
document of every position (any integers; a new document starts wherever the id changes
from one position to the next). :class:`Documents` holds the canonical form and what the
mixers need from it:

- ``ids`` [B, N]: 0, 1, 2 … numbered afresh in each row (consecutive, non-decreasing: a
  block of positions spans a contiguous range of documents, so the tile bounds of the
  ``Document`` mask are exact);
- ``starts`` [B, N]: True at the first position of every document (where a recurrence
  resets its state and a convolution its history);
- ``positions`` [B, N]: the index of each position inside its document (positional
  encodings restart at every document);
- :meth:`to_padded` / :meth:`from_padded`: the documents gathered into a [documents,
  longest, ...] batch and back (the Toeplitz family runs its unchanged algorithms on it).

The generated module's ``forward(..., doc_ids=...)`` makes the documents current for the
call (:func:`packing`); every mixer and position-dependent layer whose sequence axis is the
packed one reads them with :func:`current`, and layers that cannot honour boundaries refuse
by name (``codegen/torch/runtime.py``: ``unpacked``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["Documents", "pack", "packing", "current", "mixer_ids", "canonical"]


@dataclass(frozen=True, eq=False)
class Documents:
    """The documents of a packed batch. Build with :meth:`from_ids` or :meth:`from_cu_seqlens`."""

    ids: Tensor            # [B, N] int64, 0, 1, 2 … in each row (canonical)

    @classmethod
    def from_ids(cls, doc_ids: Tensor) -> Documents:
        """``doc_ids`` [B, N] (or [N]) of any integer dtype; a document is a run of equal ids."""
        if not isinstance(doc_ids, Tensor) or doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool \
                or doc_ids.is_complex():
            raise TypeError("doc_ids must be an integer tensor [B, N] (the document of every position)")
        ids = doc_ids if doc_ids.dim() == 2 else doc_ids.reshape(1, -1) if doc_ids.dim() == 1 else None
        if ids is None:
            raise ValueError(f"doc_ids must be [B, N] or [N], got shape {tuple(doc_ids.shape)}")
        change = torch.ones_like(ids, dtype=torch.bool)
        change[:, 1:] = ids[:, 1:] != ids[:, :-1]
        return cls(torch.cumsum(change, dim=1) - 1)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: Sequence[int] | Tensor, n: int | None = None) -> Documents:
        """One row from FlashAttention's ``cu_seqlens`` (0, l0, l0 + l1, …); positions past
        the last boundary up to ``n`` form one more document (padding)."""
        cu = torch.as_tensor(cu_seqlens, dtype=torch.long).flatten()
        total = int(cu[-1]) if n is None else n
        if cu.numel() < 1 or int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()) or int(cu[-1]) > total:
            raise ValueError(f"cu_seqlens must start at 0, not decrease and end at most at N = {total}")
        ids = torch.bucketize(torch.arange(total), cu[1:], right=True)
        return cls.from_ids(ids[None])

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    @cached_property
    def starts(self) -> Tensor:
        """[B, N] bool: the first position of every document."""
        s = torch.ones_like(self.ids, dtype=torch.bool)
        s[:, 1:] = self.ids[:, 1:] != self.ids[:, :-1]
        return s

    @cached_property
    def positions(self) -> Tensor:
        """[B, N] int64: the index of every position inside its document."""
        n = self.ids.shape[1]
        idx = torch.arange(n, device=self.ids.device).expand_as(self.ids)
        first = torch.where(self.starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
        return idx - first

    def check(self, b: int, n: int, what: str) -> None:
        """Refuse a tensor whose batch or length is not the packed one."""
        if self.ids.shape[1] != n or b not in (1, self.ids.shape[0]):     # b = 1: x broadcast over the batch
            raise ValueError(f"{what}: doc_ids are {list(self.ids.shape)} but the sequence is [B={b}, N={n}]")

    def view(self, rank: int) -> Tensor:
        """The ids shaped to broadcast against the leading dims and sequence axis of a tensor
        of ``rank`` laid out [B, …, N, D] (batch first, sequence second to last): [B, 1…, N]."""
        b, n = self.ids.shape
        return self.ids.reshape(b, *([1] * (rank - 3)), n)

    # ---- the documents as a batch of their own --------------------------------------------

    @cached_property
    def _layout(self) -> tuple[Tensor, Tensor, Tensor, int]:
        """(row, start, length) of every document, and the longest length."""
        b, n = self.ids.shape
        flat = self.starts.reshape(-1).nonzero().squeeze(1)
        row, start = flat // n, flat % n
        end = torch.cat([flat[1:], flat.new_tensor([b * n])])
        length = torch.minimum(end - flat, n - start)
        return row, start, length, int(length.max()) if length.numel() else 0

    @property
    def count(self) -> int:
        """Documents in the batch (all rows together)."""
        return self._layout[0].numel()

    @property
    def longest(self) -> int:
        return self._layout[3]

    @cached_property
    def _gather(self) -> tuple[Tensor, Tensor, Tensor]:
        """(source, valid, inverse): ``source`` [docs·longest] the flat position (row·N + i) each
        padded slot reads (0 past a document's end, where ``valid`` is False); ``inverse`` [B·N]
        the padded slot of every position. Both directions are then one ``index_select`` (a
        gather; its backward an ``index_add``), never a scatter."""
        row, start, length, longest = self._layout
        n = self.ids.shape[1]
        t = torch.arange(longest, device=self.ids.device)
        valid = t[None, :] < length[:, None]                                    # [docs, longest]
        flat = row[:, None] * n + start[:, None] + t[None, :]
        source = torch.where(valid, flat, torch.zeros_like(flat)).reshape(-1)
        slot = torch.arange(valid.numel(), device=self.ids.device).reshape(valid.shape)
        inverse = torch.empty(self.ids.numel(), dtype=torch.long, device=self.ids.device)
        inverse[flat[valid]] = slot[valid]
        return source, valid, inverse

    def to_padded(self, x: Tensor, axis: int = -2) -> Tensor:
        """x [B, …, N, …] (batch first, the sequence at ``axis``) → [docs, …, longest, …]:
        document d's positions first, zeros after its end (a causal or a two-sided
        convolution of the padded row equals that of the document alone)."""
        b, n = self.ids.shape
        axis = axis % x.dim()
        x = x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x
        source, valid, _ = self._gather
        xm = x.movedim(axis, 1)                                                  # [B, N, …]
        rest = xm.shape[2:]
        out = xm.reshape(b * n, *rest).index_select(0, source.to(x.device))
        out = out.reshape(*valid.shape, *rest) * valid.reshape(*valid.shape, *([1] * len(rest))).to(out.dtype)
        return out.movedim(1, axis)

    def from_padded(self, y: Tensor, axis: int = -2) -> Tensor:
        """The inverse of :meth:`to_padded`: [docs, …, longest, …] → [B, …, N, …]."""
        b, n = self.ids.shape
        axis = axis % y.dim()
        _, valid, inverse = self._gather
        ym = y.movedim(axis, 1)                                                  # [docs, longest, …]
        rest = ym.shape[2:]
        out = ym.reshape(valid.numel(), *rest).index_select(0, inverse.to(y.device))
        return out.reshape(b, n, *rest).movedim(1, axis)


def canonical(ids: Tensor) -> Tensor:
    """Ids [..., N] renumbered 0, 1, 2 … along the last axis (a new number where the id changes)."""
    change = torch.ones_like(ids, dtype=torch.bool)
    change[..., 1:] = ids[..., 1:] != ids[..., :-1]
    return torch.cumsum(change, dim=-1) - 1


def mixer_ids(docs: Documents | Tensor | None, x: Tensor, what: str, also: Tensor | None = None) -> Tensor | None:
    """The canonical document ids for a mixer whose input x is [B, …, N, D]: from the call's
    documents ([B, 1…, N], after checking the sizes), or ids given to the mixer ([..., N],
    right-aligned against its batch dims, a ``document(ids)`` mask of the file), or both
    (a document then ends wherever either says so). None when there are none."""
    if isinstance(docs, Documents):
        docs.check(x.shape[0], x.shape[-2], what)
        ids = docs.view(x.dim())
    else:
        ids = docs
    if also is not None:
        if also.shape[-1] != x.shape[-2]:
            raise ValueError(f"{what}: document ids cover {also.shape[-1]} positions, the sequence has {x.shape[-2]}")
        if ids is None:
            return canonical(also)
        a, b = torch.broadcast_tensors(canonical(ids), canonical(also))
        return canonical(a * (int(b.max()) + 1) + b)
    return None if ids is None else canonical(ids)


# ---- the documents of the current call ------------------------------------------------------

_CURRENT: contextvars.ContextVar[Documents | None] = contextvars.ContextVar("seqdsl_documents", default=None)


@contextlib.contextmanager
def packing(docs: Documents | None) -> Iterator[Documents | None]:
    """Make ``docs`` the documents of the layers run inside (None: one sequence per row)."""
    token = _CURRENT.set(docs)
    try:
        yield docs
    finally:
        _CURRENT.reset(token)


def current() -> Documents | None:
    """The documents of the call being run (None outside a packed call)."""
    return _CURRENT.get()


# ---- building packed rows ----------------------------------------------------------------------


def pack(sequences: Sequence[Tensor], length: int | None = None, *, pad_value: int | float = 0,
         rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Pack ``sequences`` (each [L_i] or [L_i, C]) into rows of ``length`` positions.

    Documents are placed in order, first fit: a document goes into the current row if it fits,
    else a new row starts (a document longer than ``length`` is an error; ``length`` defaults
    to the total length, i.e. one row). Returns ``(packed [R, length, …], doc_ids [R, length])``;
    the unused tail of a row is ``pad_value`` and is a document of its own (its outputs are to
    be ignored, e.g. a target of -100)."""
    if not sequences:
        raise ValueError("pack() needs at least one sequence")
    lengths = [int(s.shape[0]) for s in sequences]
    length = sum(lengths) if length is None else int(length)
    if max(lengths) > length:
        raise ValueError(f"a sequence of {max(lengths)} positions does not fit a row of {length}")
    placed: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if used + n > length:
            placed.append([])
            used = 0
        placed[-1].append(i)
        used += n
    if rows is not None:
        if len(placed) > rows:
            raise ValueError(f"the sequences need {len(placed)} rows of {length}, only {rows} allowed")
        placed += [[] for _ in range(rows - len(placed))]
    first = sequences[0]
    out = torch.full((len(placed), length, *first.shape[1:]), pad_value, dtype=first.dtype, device=first.device)
    ids = torch.empty(len(placed), length, dtype=torch.long, device=first.device)
    for r, members in enumerate(placed):
        at = 0
        for d, i in enumerate(members):
            out[r, at:at + lengths[i]] = sequences[i]
            ids[r, at:at + lengths[i]] = d
            at += lengths[i]
        ids[r, at:] = len(members)
    return out, ids
