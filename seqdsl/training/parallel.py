"""How the ranks of ``seqdsl train --nproc P --seq-parallel S`` share the work.

Rank r = d·S + s: the S consecutive ranks of data-parallel group d (of D = P/S) share one
sequence, rank s of that sequence-parallel group holding the rows of the layout's s-th
part (``codegen/distributed/layout.py``); group d takes rows [d·B/D, (d+1)·B/D) of the
global batch. S = 1 is plain data parallelism (each rank its rows, whole sequences).

What makes P ranks compute one process's step (docs/training.md, "Sequence parallel"):

- every rank's loss is its token-loss sum divided by the *global* count of counted targets,
  and gradients are summed over the whole world: a sharded output's targets are sharded
  with the same layout (a zig-zag layout permutes positions, so the targets follow), so
  each target is counted by exactly one rank (an answer-only loss lives on the one rank
  holding the answer; the others add zero, yet run the same backward collectives);
- a replicated output (a classifier's logits from a [CLS] row) is the same on the S ranks
  of a group: each computes the whole loss, whose backward counts 1/S there
  (``rt.seq_output``, docs/distributed.md), so the world's sum is one loss's gradient; its
  loss and accuracy are reported by rank s = 0 only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codegen.distributed.layout import LAYOUTS
from seqdsl.errors import SeqError
from seqdsl.training.tasks import Batch


@dataclass(frozen=True)
class Ranks:
    """This rank's place: data-parallel group ``dp`` of ``dp_size``, sequence rank ``sp`` of
    ``sp_size`` in ``group`` (None: not sequence-parallel, or the whole world)."""

    world: int
    dp: int
    dp_size: int
    sp: int
    sp_size: int
    group: object | None = None
    layout: str = "contiguous"

    @property
    def split(self) -> bool:
        return self.sp_size > 1

    def rows(self, batch: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a global batch of ``batch`` rows."""
        per = batch // self.dp_size
        return self.dp * per, (self.dp + 1) * per


def check(nproc: int, seq_parallel: int, batch: int, device: str, layout: str = "auto") -> None:
    """Refuse, before any process starts, a split that does not exist."""
    if layout not in ("auto", *LAYOUTS):
        raise SeqError(f"--layout {layout}: give auto, {' or '.join(LAYOUTS)}")
    if seq_parallel < 1 or nproc % seq_parallel:
        raise SeqError(f"--seq-parallel {seq_parallel} must divide --nproc {nproc} (the ranks sharing one "
                       "sequence)")
    dp = nproc // seq_parallel
    if batch % dp:
        raise SeqError(f"--batch {batch}: the {dp} data-parallel groups (--nproc {nproc} / --seq-parallel "
                       f"{seq_parallel}) must split it evenly")
    if seq_parallel > 1 and device != "cpu":
        raise SeqError(f"--seq-parallel {seq_parallel} with --device {device}: the sequence-parallel algorithms "
                       "run on gloo (CPU) only so far")


def resolve_layout(layout: str, graph, seq_parallel: int) -> str:
    """``auto``: the layout the model's graph is best split with (zig-zag for a causal softmax
    mixer: ``seqdsl.distributed.preferred_layout``); contiguous when nothing is split."""
    if layout != "auto":
        return layout
    if seq_parallel == 1:
        return "contiguous"
    from seqdsl.distributed import preferred_layout

    return preferred_layout(graph)


def check_length(n: int, seq_parallel: int, layout: str, file: str) -> None:
    """Every rank must hold rows: N ≥ S (contiguous), N ≥ 2S (zig-zag: two chunks per rank)."""
    need = 2 * seq_parallel if layout == "zigzag" else seq_parallel
    if seq_parallel > 1 and n < need:
        raise SeqError(f"{file}: --seq-parallel {seq_parallel} with the {layout} layout needs a sequence of at "
                       f"least {need} positions (every rank holds {'two chunks' if layout == 'zigzag' else 'rows'}); "
                       f"the task's is {n}")


def make_ranks(rank: int, world: int, seq_parallel: int, layout: str) -> Ranks:
    """This rank's place; creates the sequence-parallel groups (a collective: every rank
    calls it, in the same order) when there are several."""
    dp_size = world // seq_parallel
    group = None
    if seq_parallel > 1 and dp_size > 1:
        import torch.distributed as dist

        for d in range(dp_size):                 # every rank creates every group (torch's rule)
            g = dist.new_group(list(range(d * seq_parallel, (d + 1) * seq_parallel)))
            if d == rank // seq_parallel:
                group = g
    return Ranks(world, rank // seq_parallel, dp_size, rank % seq_parallel, seq_parallel, group, layout)


def shard(batch: Batch, ranks: Ranks, kind: str, check_only: bool = False) -> Batch:
    """This rank's part of its group's rows: inputs (axis 1 of [B, N] and [B, N, C]) and, for
    a per-position task, targets and masks along N with the same layout. ``check_only``:
    only refuse what cannot be split."""
    if not ranks.split:
        return batch
    if batch.doc_ids is not None:
        raise SeqError("--seq-parallel: packed rows (doc_ids) and sequence parallelism together are not supported; "
                       "train packed rows with --seq-parallel 1")
    if check_only:
        return batch
    import seqdsl.distributed as sd

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else sd.shard(t, 1, group=ranks.group, layout=ranks.layout)

    per_position = kind == "lm"
    return Batch(cut(batch.inputs), cut(batch.targets) if per_position else batch.targets,
                 cut(batch.loss_mask) if per_position else batch.loss_mask,
                 cut(batch.score_mask) if per_position else batch.score_mask, None, None, dict(batch.extra))


def counts_here(ranks: Ranks, kind: str) -> bool:
    """Whether this rank's loss and accuracy enter the reported sums: always for sharded
    (per-position) outputs, only on sequence rank 0 for a replicated output."""
    return kind == "lm" or ranks.sp == 0
