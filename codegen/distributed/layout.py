"""How a sequence of N positions is spread over the P ranks of a sequence-parallel group.

A rank holds one or more *segments* (contiguous ranges of global positions), stored one
after the other along the sequence axis of its local tensor:

- ``contiguous``: N split into P near-equal ranges (the first N mod P ranks one longer);
  rank r holds range r.
- ``zigzag``: N split into 2P near-equal chunks; rank r holds chunks r and 2P − 1 − r.
  Under a causal mask every rank then has the same amount of work (an early chunk sees
  few keys, its partner at the end sees many), which the contiguous layout lacks.

Every algorithm of ``codegen/distributed`` works on segments, so both layouts (and any
future one) are served by the same code. Nothing here communicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

LAYOUTS = ("contiguous", "zigzag")


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` near-equal ranges covering [0, n) (the first n mod parts one longer)."""
    q, r = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + q + (1 if i < r else 0)
        out.append((start, stop))
        start = stop
    return out


@dataclass(frozen=True)
class Layout:
    """Which global positions each rank holds. ``n``: the global length; ``parts``: P."""

    n: int
    parts: int
    kind: str = "contiguous"

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown sequence layout {self.kind!r} (known: {', '.join(LAYOUTS)})")
        if self.parts < 1:
            raise ValueError(f"a layout needs at least one rank, got {self.parts}")

    @cached_property
    def _segments(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        if self.kind == "contiguous":
            return tuple((s,) for s in _split(self.n, self.parts))
        chunks = _split(self.n, 2 * self.parts)
        return tuple((chunks[r], chunks[2 * self.parts - 1 - r]) for r in range(self.parts))

    def segments(self, rank: int) -> tuple[tuple[int, int], ...]:
        """The global ranges [start, stop) rank ``rank`` holds, in local order."""
        return self._segments[rank]

    def size(self, rank: int) -> int:
        """The local length of ``rank``."""
        return sum(b - a for a, b in self._segments[rank])

    @property
    def sizes(self) -> list[int]:
        return [self.size(r) for r in range(self.parts)]

    def positions(self, rank: int, device=None) -> torch.Tensor:
        """The global position of every local row of ``rank`` (int64 [size])."""
        return torch.cat([torch.arange(a, b, device=device) for a, b in self._segments[rank]]
                         or [torch.zeros(0, dtype=torch.long, device=device)])

    def order(self) -> list[tuple[int, int, int, int]]:
        """Every segment in global order: (start, stop, rank, its index among the rank's segments)."""
        return sorted((a, b, r, i) for r in range(self.parts) for i, (a, b) in enumerate(self._segments[r]))

    def natural(self, device=None) -> torch.Tensor:
        """The permutation p with (rows of every rank concatenated in rank order)[p] = the
        sequence in global order."""
        cat = torch.cat([self.positions(r, device) for r in range(self.parts)])
        return torch.argsort(cat)


def from_sizes(sizes: list[int], kind: str) -> Layout:
    """The layout whose ranks hold ``sizes`` rows; refuses sizes the layout would not give."""
    layout = Layout(sum(sizes), len(sizes), kind)
    if layout.sizes != list(sizes):
        raise ValueError(f"local lengths {sizes} are not a {kind} split of N = {sum(sizes)} over {len(sizes)} "
                         f"ranks (expected {layout.sizes}); shard inputs with seqdsl.distributed.shard")
    return layout
