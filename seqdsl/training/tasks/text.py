"""Byte-level text from a corpus on every machine: the Python standard library's own
``.py`` files (found with ``sysconfig``; ``site-packages`` excluded).

Files are split into train/valid/test by a stable hash of their path relative to the
library (90/5/5), so the split does not depend on the order the file system lists them
in. The corpus differs between Python versions: a result names the version it used.

- ``text_lm``: next-byte prediction (vocabulary 256) on windows of ``length + 1`` bytes
  of the concatenated files of a split (train windows at random offsets, evaluation
  windows at fixed strides). Reported as bits per byte, against the unigram baseline
  (the cross-entropy of the train split's byte frequencies on the evaluation split).
  With ``documents=1`` a window that spans files is a packed row: the batch carries
  ``doc_ids`` (the file of every position, docs/modules.md "Packed rows"), so the model's
  state and attention restart at each file, and the byte that starts a file is not
  predicted from the file before it (not counted in the loss).
- ``text_classify``: which top-level package of the library a file belongs to, from its
  first ``length`` bytes (byte + 1, 0 pads a short file; vocabulary 257), over the
  ``classes`` packages with the most files (``test`` and ``idlelib`` excluded: one is
  most of the library, the other a single application).
"""

from __future__ import annotations

import math
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from seqdsl.errors import SeqError
from seqdsl.training.tasks.base import Batch, Layout, Task, rng_for, stable_hash
from seqdsl.training.tasks.examples import ExampleTask

EXCLUDED_PACKAGES = ("site-packages", "test", "idlelib")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(rel: str) -> str:
    bucket = stable_hash(rel) % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[tuple[str, str], ...]:
    """(path relative to the library, split) for every .py file, sorted by path."""
    root = stdlib_dir()
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] == "site-packages" or not p.is_file():
            continue
        out.append((rel, split_of(rel)))
    if not out:
        raise SeqError(f"no .py files found in the standard library folder {root}")
    return tuple(sorted(out))


@lru_cache(maxsize=3)
def corpus_files(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of the split's files, concatenated in path order, and where each file starts."""
    root = stdlib_dir()
    parts = [np.frombuffer((root / rel).read_bytes(), dtype=np.uint8) for rel, s in stdlib_files() if s == split]
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return np.concatenate(parts), starts


def corpus(split: str) -> np.ndarray:
    return corpus_files(split)[0]


class TextLM(Task):
    name = "text_lm"
    source = "bytes of the Python standard library's .py files (sysconfig), split by file"
    metric = "bits_per_byte"

    def __init__(self, length: int = 256, eval_windows: int = 256, documents: int = 0) -> None:
        if length < 1:
            raise SeqError("text_lm: length must be positive")
        self.length, self.eval_windows, self.documents = int(length), int(eval_windows), bool(int(documents))
        self.layout = Layout("lm", "int", self.length, 256, vocab=256)

    def eval_size(self, batch: int) -> int:
        return -(-self.eval_windows // batch)

    def batch(self, split: str, index: int, size: int, seed: int) -> Batch:
        data, file_starts = corpus_files(split)
        span = len(data) - self.length - 1
        if split == "train":
            starts = rng_for(seed, split, index).integers(0, span, size=size)
        else:
            first = index * size
            count = min(size, self.eval_windows - first)
            if count <= 0:
                raise IndexError(f"text_lm: batch {index} is past the end of the {split} windows")
            stride = span // self.eval_windows
            starts = np.arange(first, first + count) * stride
        rows = np.stack([data[s:s + self.length + 1] for s in starts]).astype(np.int64)
        x, y = torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
        if not self.documents:
            ones = torch.ones_like(x, dtype=torch.bool)
            return Batch(x, y, ones, ones)
        where = np.asarray(starts)[:, None] + np.arange(self.length + 1)[None, :]
        files = np.searchsorted(file_starts, where, side="right")       # the file of every byte
        ids = torch.from_numpy(files - files[:, :1])                    # 0 for the row's first document
        same = ids[:, 1:] == ids[:, :-1]                                # target in the same file as its input
        return Batch(x, y, same, same.clone(), doc_ids=ids[:, :-1].contiguous())

    def baseline(self) -> dict:
        counts = np.bincount(corpus("train"), minlength=256).astype(np.float64) + 1.0   # add-one: no zero
        p = counts / counts.sum()
        ev = np.bincount(corpus(self.eval_split), minlength=256).astype(np.float64)
        bits = float(-(ev * np.log2(p)).sum() / ev.sum())
        return {"unigram_bits_per_byte": bits, "uniform_bits_per_byte": math.log2(256)}


class TextClassify(ExampleTask):
    name = "text_classify"
    source = "the Python standard library's .py files, labelled by top-level package"

    def __init__(self, length: int = 1024, classes: int = 8) -> None:
        super().__init__()
        files = [(rel, s) for rel, s in stdlib_files() if "/" in rel and rel.split("/")[0] not in EXCLUDED_PACKAGES]
        counts: dict[str, int] = {}
        for rel, _ in files:
            counts[rel.split("/")[0]] = counts.get(rel.split("/")[0], 0) + 1
        names = sorted(counts, key=lambda k: (-counts[k], k))[:int(classes)]
        if len(names) < 2:
            raise SeqError("text_classify: fewer than two packages found in the standard library")
        self.labels = sorted(names)
        self.files = {s: [rel for rel, sp in files if sp == s and rel.split("/")[0] in names]
                      for s in ("train", "valid", "test")}
        self.length = int(length)
        self.layout = Layout("classify", "int", self.length, len(self.labels), vocab=257)

    def split_size(self, split: str) -> int:
        return len(self.files[split])

    def example(self, split: str, j: int) -> tuple:
        rel = self.files[split][j]
        raw = np.frombuffer((stdlib_dir() / rel).read_bytes()[:self.length], dtype=np.uint8)
        row = np.zeros(self.length, dtype=np.int64)
        row[:len(raw)] = raw.astype(np.int64) + 1
        return row, self.labels.index(rel.split("/")[0])

    def baseline(self) -> dict:
        train = [self.labels.index(r.split("/")[0]) for r in self.files["train"]]
        major = max(set(train), key=train.count)
        ev = [self.labels.index(r.split("/")[0]) for r in self.files[self.eval_split]]
        return {"majority_class": self.labels[major], "majority_accuracy": ev.count(major) / max(1, len(ev))}
