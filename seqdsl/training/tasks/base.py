"""What a training task is: a layout the model must fit, and batches made from an index.

A task never keeps a cursor. Batch ``i`` of a split is a pure function of (seed, split, i),
so the data order is deterministic, a resumed run reads exactly the batches it would
have read, and ``--nproc P`` slices the same global batch P ways.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Layout:
    """The tensors a task feeds and expects.

    ``kind``: ``"lm"`` (inputs [B, N] → logits [B, N, V]; a target per position, a mask
    says which positions count) or ``"classify"`` (inputs → logits [B, C]).
    ``inputs``: ``"int"`` (token ids in [0, vocab)) or ``"float"`` (values [B, N, channels]).
    ``outputs``: V for ``lm``, the number of classes for ``classify``.
    """

    kind: str
    inputs: str
    length: int
    outputs: int
    vocab: int | None = None
    channels: int | None = None

    def describe(self) -> str:
        src = f"int[B, {self.length}] (vocabulary {self.vocab})" if self.inputs == "int" else \
            f"[B, {self.length}, {self.channels}]"
        dst = f"[B, {self.length}, {self.outputs}]" if self.kind == "lm" else f"[B, {self.outputs}]"
        return f"{src} -> {dst}"


@dataclass
class Batch:
    """One batch. ``targets``: [B, N] token ids (``lm``) or [B] class ids (``classify``).

    ``loss_mask`` ([B, N], ``lm`` only): positions whose target enters the loss.
    ``score_mask`` ([B, N], ``lm`` only): positions whose prediction the accuracy counts
    (for the synthetic tasks, the answer only, as in the papers' evaluation).
    ``doc_ids`` / ``cu_seqlens``: for packed rows (several documents in one row): the
    document index of every position ([B, N]) and the cumulative document lengths of the
    flattened batch ([n_docs + 1], FlashAttention's convention). None for unpacked batches.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor | None = None
    score_mask: torch.Tensor | None = None
    doc_ids: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device`` (the same object when it is there already)."""
        if self.inputs.device == device:
            return self
        def move(t):
            return None if t is None else t.to(device)
        return Batch(move(self.inputs), move(self.targets), move(self.loss_mask), move(self.score_mask),
                     move(self.doc_ids), move(self.cu_seqlens), self.extra)

    def rows(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) of the batch (one data-parallel rank's share)."""
        def cut(t):
            return None if t is None else t[start:stop]
        if self.cu_seqlens is not None:
            raise NotImplementedError("slicing a packed batch by rows: split it by documents instead")
        return Batch(cut(self.inputs), cut(self.targets), cut(self.loss_mask), cut(self.score_mask),
                     cut(self.doc_ids), None, dict(self.extra))

    def count(self) -> int:
        """How many targets enter the loss (the loss is a sum over them divided by this)."""
        if self.loss_mask is None:
            return int(self.targets.shape[0])
        return int(self.loss_mask.sum())


def rng_for(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of example/batch ``index`` of ``split`` (``stream`` tells
    other uses apart, e.g. the order of an epoch): independent, reproducible streams."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index), int(stream)])


def stable_hash(text: str) -> int:
    """A hash that does not change between runs or machines (Python's hash() does)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


class Task:
    """A training task. Subclasses set ``name``, ``layout``, ``source`` and implement
    ``batch``; the options they accept are their constructor's keyword arguments."""

    name: str = ""
    source: str = ""          # where the rules come from (paper, code), for docs and reports
    layout: Layout
    metric: str = "accuracy"  # the headline metric; the byte LM reports bits per byte too
    eval_split: str = "valid"

    def batch(self, split: str, index: int, size: int, seed: int) -> Batch:
        raise NotImplementedError

    def eval_size(self, batch: int) -> int | None:
        """Number of evaluation batches that cover the split, or None for a stream."""
        return None

    def baseline(self) -> dict:
        """Reference numbers a model must beat (majority class, unigram bits per byte)."""
        return {}
