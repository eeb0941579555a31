"""Sequential image classification, as LRA's Image task reads CIFAR-10 pixel by pixel,
with the dataset scikit-learn ships: the 1797 8×8 handwritten digits of
``sklearn.datasets.load_digits`` (UCI optdigits test set; grey levels 0..16).

Rows are read row by row into a sequence of 64 pixels: ``[B, 64, 1]`` floats (level / 16)
or, with ``tokens=1``, ``int[B, 64]`` grey levels (vocabulary 17). The images are split
once by a fixed permutation (seed 0): 1437 train, 180 valid, 180 test.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from seqdsl.errors import SeqError
from seqdsl.training.tasks.base import Layout
from seqdsl.training.tasks.examples import ExampleTask


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The images [1797, 64] and labels. Read straight from the file scikit-learn ships
    (``sklearn/datasets/data/digits.csv.gz``, what ``load_digits`` reads), which spares
    importing scikit-learn and SciPy (seconds); ``load_digits`` if the file moved."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise SeqError("the digits task needs scikit-learn (pip install 'seqdsl[test]' or scikit-learn)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


class Digits(ExampleTask):
    name = "digits"
    source = "scikit-learn load_digits (8×8, 10 classes), pixel by pixel as LRA Image reads CIFAR-10"

    def __init__(self, tokens: int = 0) -> None:
        super().__init__()
        x, _ = digits()
        perm = np.random.default_rng(0).permutation(len(x))
        n_eval = len(x) // 10
        self.split_idx = {"valid": perm[:n_eval], "test": perm[n_eval:2 * n_eval], "train": perm[2 * n_eval:]}
        self.tokens = bool(int(tokens))
        self.layout = (Layout("classify", "int", 64, 10, vocab=17) if self.tokens
                       else Layout("classify", "float", 64, 10, channels=1))

    def split_size(self, split: str) -> int:
        return len(self.split_idx[split])

    def example(self, split: str, j: int) -> tuple:
        x, y = digits()
        i = int(self.split_idx[split][j])
        row = x[i].astype(np.int64) if self.tokens else (x[i] / 16.0).reshape(64, 1)
        return row, int(y[i])

    def baseline(self) -> dict:
        _, y = digits()
        train = y[self.split_idx["train"]]
        major = int(np.bincount(train).argmax())
        ev = y[self.split_idx[self.eval_split]]
        return {"majority_class": major, "majority_accuracy": float((ev == major).mean())}

