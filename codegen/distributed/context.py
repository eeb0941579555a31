"""The active sequence-parallel group, which the family runtimes consult.

``with sequence_parallel(group): y = model(x_shard)`` makes every mixer call inside the
block run its distributed algorithm (``codegen/distributed``) over ``group``, with each
rank holding the rows of ``layout`` (see ``layout.py``). Outside such a block nothing
changes: the family runtimes see ``active() is None`` and run on one process.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from codegen.distributed.layout import LAYOUTS, Layout, from_sizes

SOFTMAX_STRATEGIES = ("auto", "ring", "ulysses")


@dataclass(frozen=True)
class SequenceParallel:
    """A sequence-parallel group: ``group`` (None: the default group), the layout kind of the
    sequence over its ranks, the softmax strategy (auto: the cost rule picks) and ``memory``,
    the bytes per rank one attention call may hold (inputs, output and the strategy's buffers;
    None: no limit), which the cost rule weighs with the traffic."""

    group: object | None = None
    layout: str = "contiguous"
    softmax: str = "auto"
    memory: float | None = None
    #: the layout of the call being run (set by the entry's ``bind_sizes``, read by the layers
    #: that need positions or the global length; see codegen/distributed/hooks.py)
    state: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown sequence layout {self.layout!r} (known: {', '.join(LAYOUTS)})")
        if self.softmax not in SOFTMAX_STRATEGIES:
            raise ValueError(f"unknown softmax strategy {self.softmax!r} (known: {', '.join(SOFTMAX_STRATEGIES)})")

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def global_rank(self, rank: int) -> int:
        """The default group's rank of this group's ``rank`` (point-to-point ops take those)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def layout_of(self, n_local: int) -> Layout:
        """The layout of a sequence of which this rank holds ``n_local`` rows (one all-gather
        of the local lengths: every rank must call it, in the same order)."""
        mine = torch.tensor([n_local], dtype=torch.long)
        sizes = torch.empty(self.size, dtype=torch.long)
        from codegen.distributed.comm import all_gather_into

        all_gather_into(sizes, mine, self.group)
        return from_sizes([int(s) for s in sizes], self.layout)


_active: contextvars.ContextVar[SequenceParallel | None] = contextvars.ContextVar("seqdsl_sp", default=None)


def active() -> SequenceParallel | None:
    """The sequence-parallel group of the enclosing ``sequence_parallel`` block, if any."""
    return _active.get()


@contextlib.contextmanager
def sequence_parallel(group=None, layout: str = "contiguous", softmax: str = "auto",
                      memory: float | None = None) -> Iterator[SequenceParallel]:
    """Run the mixers called inside the block sequence-parallel over ``group`` (``memory``: a
    per-rank budget in bytes for one attention call, see :class:`SequenceParallel`)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sequence_parallel needs an initialised torch.distributed process group "
                           "(seqdsl.distributed.init() or torchrun)")
    sp = SequenceParallel(group, layout, softmax, memory)
    token = _active.set(sp)
    try:
        yield sp
    finally:
        _active.reset(token)


_suspended: contextvars.ContextVar[SequenceParallel | None] = contextvars.ContextVar("seqdsl_sp_held", default=None)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """No sequence parallelism inside (a distributed algorithm's own local calls)."""
    held = _active.get() or _suspended.get()
    token, token_held = _active.set(None), _suspended.set(held)
    try:
        yield
    finally:
        _active.reset(token)
        _suspended.reset(token_held)


def group() -> SequenceParallel | None:
    """The group of the enclosing ``sequence_parallel`` block, also inside ``suspended``
    (whose local calls every rank runs alike): what a random draw shared by the ranks uses."""
    return _active.get() or _suspended.get()
