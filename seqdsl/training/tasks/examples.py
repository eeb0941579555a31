"""Tasks made of a fixed, finite set of examples per split (generated or read once).

The training stream walks the train set in epochs, each in its own seeded permutation;
position ``p`` of the stream is example ``perm[epoch(p)][p mod n]``. Evaluation walks the
evaluation split in order. Both are pure functions of (seed, batch index).
"""

from __future__ import annotations

import numpy as np
import torch

from seqdsl.training.tasks.base import Batch, Task, rng_for


class ExampleTask(Task):
    """Subclasses implement ``split_size(split)`` and ``example(split, j)`` returning
    ``(inputs, target)`` as numpy arrays (lm: tokens [N+1] or (inputs [N], targets [N],
    loss mask [N], score mask [N]); classify: (inputs, class id))."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple] = {}
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def example(self, split: str, j: int) -> tuple:
        raise NotImplementedError

    def eval_size(self, batch: int) -> int | None:
        return -(-self.split_size(self.eval_split) // batch)

    def _get(self, split: str, j: int) -> tuple:
        key = (split, j)
        if key not in self._cache:
            self._cache[key] = self.example(split, j)
        return self._cache[key]

    def indices(self, split: str, index: int, size: int, seed: int) -> list[int]:
        n = self.split_size(split)
        if split != "train":
            return list(range(index * size, min(n, (index + 1) * size)))
        out = []
        for p in range(index * size, (index + 1) * size):
            epoch = p // n
            if (seed, epoch) not in self._perm:
                self._perm[(seed, epoch)] = rng_for(seed, "train", epoch, stream=1).permutation(n)
            out.append(int(self._perm[(seed, epoch)][p % n]))
        return out

    def batch(self, split: str, index: int, size: int, seed: int) -> Batch:
        items = [self._get(split, j) for j in self.indices(split, index, size, seed)]
        if not items:
            raise IndexError(f"{self.name}: batch {index} is past the end of the {split} split")
        return collate(items, self.layout.kind, self.layout.inputs)


def collate(items: list[tuple], kind: str, inputs: str) -> Batch:
    """Stack examples into a batch (every example of a task has the same length)."""
    dtype = torch.long if inputs == "int" else torch.float32
    if kind == "classify":
        x = torch.as_tensor(np.stack([it[0] for it in items]), dtype=dtype)
        return Batch(x, torch.as_tensor([int(it[1]) for it in items], dtype=torch.long))
    x = torch.as_tensor(np.stack([it[0] for it in items]), dtype=dtype)
    y = torch.as_tensor(np.stack([it[1] for it in items]), dtype=torch.long)
    loss = torch.as_tensor(np.stack([it[2] for it in items]), dtype=torch.bool)
    score = torch.as_tensor(np.stack([it[3] for it in items]), dtype=torch.bool)
    return Batch(x, y, loss, score)
