"""The synthetic in-context tasks of the SSM papers.

Associative recall and induction heads follow the H3 paper (Fu et al. 2023, §3.1) as its
released generator (HazyResearch/safari, src/dataloaders/synthetics.py) defines them:

- vocabulary ``vocab`` = ``vocab - 2`` ordinary tokens plus two specials, the copy
  prefix ``=>`` (id vocab-2) and the no-op ``.`` (id vocab-1);
- **induction heads**: ``seq_len`` uniformly random ordinary tokens, then ``=>``; one
  position p < seq_len - 2 is overwritten with ``=>`` and the token after it is the
  answer, appended at the end (``triggers`` > 1 copies, half the examples with one);
- **associative recall**: keys are the first half of the ordinary tokens, values the
  second half; each example draws its own key → value map; ``seq_len // 2`` pairs
  ``k v`` with keys drawn at random, then ``=> k`` for a key that occurred, and the
  answer is its value;
- training is next-token prediction on every position (``loss=all``, as safari) or on the
  answer only (``loss=answer``); accuracy counts the answer only (safari's test masks);
- 5000 training and 500 test examples by default (safari's icl_synthetics config:
  vocab 20, input_seq_len 40). Unlike safari, duplicates are not removed (with these
  sizes a repeat is astronomically rare).

Selective copying follows Mamba (Gu & Dao 2023, §4.1 and appendix E.1): ``tokens``
data tokens at random positions of a ``seq_len`` row of noise, then ``tokens`` copy
markers; the output at the i-th marker must be the i-th data token. Vocabulary: noise 0,
marker 1, data 2..vocab-1 (the paper: 16 tokens including noise, 16 to memorise, length
4096). The input/output alignment is per position ([B, N] → [B, N, V]); only the marker
positions are scored.
"""

from __future__ import annotations

import numpy as np

from seqdsl.errors import SeqError
from seqdsl.training.tasks.base import Layout, rng_for
from seqdsl.training.tasks.examples import ExampleTask


class _Icl(ExampleTask):
    """Shared by induction heads and associative recall: the safari vocabulary and masks."""

    def __init__(self, vocab: int = 20, seq_len: int = 40, train_examples: int = 5000,
                 test_examples: int = 500, loss: str = "all", seed: int = 0) -> None:
        super().__init__()
        if vocab < 4:
            raise SeqError(f"{self.name}: vocab must be at least 4 (two specials and two ordinary tokens)")
        if loss not in ("all", "answer"):
            raise SeqError(f"{self.name}: loss must be 'all' or 'answer', got {loss!r}")
        self.vocab, self.seq_len, self.loss = int(vocab), int(seq_len), loss
        self.sizes = {"train": int(train_examples), "valid": int(test_examples), "test": int(test_examples)}
        self.data_seed = int(seed)   # the examples themselves; the run's seed only orders them
        self.copy_prefix, self.noop = self.vocab - 2, self.vocab - 1
        self.ordinary = self.vocab - 2

    def split_size(self, split: str) -> int:
        return self.sizes[split]

    def sequence(self, rng: np.random.Generator) -> tuple[list[int], int]:
        raise NotImplementedError

    def example(self, split: str, j: int) -> tuple:
        seq, answers = self.sequence(rng_for(self.data_seed, split, j))
        seq = np.asarray(seq, dtype=np.int64)
        x, y = seq[:-1], seq[1:]
        score = np.zeros(len(y), dtype=bool)
        score[len(y) - answers:] = True
        loss = np.ones(len(y), dtype=bool) if self.loss == "all" else score.copy()
        return x, y, loss, score


class InductionHeads(_Icl):
    name = "induction_heads"
    source = "H3 §3.1 (Fu et al. 2023); HazyResearch/safari src/dataloaders/synthetics.py"

    def __init__(self, vocab: int = 20, seq_len: int = 40, triggers: int = 1, **kw) -> None:
        super().__init__(vocab, seq_len, **kw)
        if self.seq_len < 3:
            raise SeqError("induction_heads: seq_len must be at least 3")
        self.triggers = int(triggers)
        self.layout = Layout("lm", "int", self.seq_len + 1, self.vocab, vocab=self.vocab)

    def sequence(self, rng: np.random.Generator) -> tuple[list[int], int]:
        n = self.seq_len
        seq = [int(t) for t in rng.integers(0, self.ordinary, size=n)] + [self.copy_prefix]
        triggers = 1 if rng.uniform() < 0.5 else self.triggers
        pos = sorted(int(p) for p in rng.integers(n - 2, size=triggers))
        kept = [pos[0]]
        for p in pos[1:]:
            if p - kept[-1] > 1:      # triggers do not overlap
                kept.append(p)
        answer = seq[kept[0] + 1]
        for p in kept:
            seq[p], seq[p + 1] = self.copy_prefix, answer
        return seq + [answer], 1


class AssociativeRecall(_Icl):
    name = "associative_recall"
    source = "H3 §3.1 (Fu et al. 2023); HazyResearch/safari src/dataloaders/synthetics.py"

    def __init__(self, vocab: int = 20, seq_len: int = 40, **kw) -> None:
        super().__init__(vocab, seq_len, **kw)
        self.keys = self.ordinary // 2
        if self.keys < 1 or self.seq_len < 2:
            raise SeqError("associative_recall: needs vocab >= 4 and seq_len >= 2")
        pairs = self.seq_len // 2
        self.layout = Layout("lm", "int", 2 * pairs + 2, self.vocab, vocab=self.vocab)

    def sequence(self, rng: np.random.Generator) -> tuple[list[int], int]:
        values = rng.integers(self.keys, self.ordinary, size=self.keys)   # this example's map
        keys = rng.integers(0, self.keys, size=self.seq_len // 2)
        seq = []
        for k in keys:
            seq += [int(k), int(values[k])]
        present = sorted(set(int(k) for k in keys))
        q = present[int(rng.integers(len(present)))]
        return seq + [self.copy_prefix, q, int(values[q])], 1


class SelectiveCopying(ExampleTask):
    name = "selective_copying"
    source = "Mamba §4.1 and appendix E.1 (Gu & Dao 2023)"

    def __init__(self, vocab: int = 16, seq_len: int = 4096, tokens: int = 16, train_examples: int = 100000,
                 test_examples: int = 500, seed: int = 0) -> None:
        super().__init__()
        if vocab < 3 or tokens < 1 or seq_len < tokens:
            raise SeqError("selective_copying: needs vocab >= 3 and tokens <= seq_len")
        self.vocab, self.seq_len, self.tokens = int(vocab), int(seq_len), int(tokens)
        self.sizes = {"train": int(train_examples), "valid": int(test_examples), "test": int(test_examples)}
        self.data_seed = int(seed)
        self.layout = Layout("lm", "int", self.seq_len + self.tokens, self.vocab, vocab=self.vocab)

    def split_size(self, split: str) -> int:
        return self.sizes[split]

    def example(self, split: str, j: int) -> tuple:
        rng = rng_for(self.data_seed, split, j)
        n, k = self.seq_len, self.tokens
        data = rng.integers(2, self.vocab, size=k)
        where = np.sort(rng.choice(n, size=k, replace=False))
        x = np.zeros(n + k, dtype=np.int64)       # noise
        x[where] = data
        x[n:] = 1                                  # copy markers
        y = np.zeros(n + k, dtype=np.int64)
        y[n:] = data
        mask = np.zeros(n + k, dtype=bool)
        mask[n:] = True
        return x, y, mask, mask.copy()
