"""The task generators follow their rules (safari's synthetics, Mamba's selective copying,
LRA's ListOps), and their batches are a pure function of (seed, split, index)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from seqdsl.errors import SeqError
from seqdsl.training.tasks import TASKS, make_task
from seqdsl.training.tasks.listops import END, ListOps, evaluate


def test_induction_heads_rules():
    t = make_task("induction_heads", {"vocab": 12, "seq_len": 24, "test_examples": 64})
    prefix = t.copy_prefix
    assert t.layout.length == 25 and t.layout.outputs == 12
    b = t.batch("valid", 0, 64, seed=0)
    for x, y, score in zip(b.inputs.tolist(), b.targets.tolist(), b.score_mask.tolist()):
        assert x[-1] == prefix                         # the query: the copy prefix at the end
        first = x.index(prefix)
        assert first < len(x) - 1 - 2 + 1              # a trigger in the first seq_len - 2 positions
        assert y[-1] == x[first + 1]                   # the answer: what followed the first trigger
        assert all(v < 10 for i, v in enumerate(x) if v != prefix)   # no no-op, ordinary tokens only
        assert y[:-1] == x[1:]                          # next-token targets
        assert score == [False] * (len(x) - 1) + [True]
    assert bool(b.loss_mask.all())                       # loss=all: every position (safari trains so)


def test_associative_recall_rules():
    t = make_task("associative_recall", {"vocab": 20, "seq_len": 30, "loss": "answer", "test_examples": 64})
    b = t.batch("valid", 0, 64, seed=0)
    assert b.inputs.shape == (64, 32)
    for x, y in zip(b.inputs.tolist(), b.targets.tolist()):
        pairs = list(zip(x[0:30:2], x[1:30:2]))
        assert all(k < 9 <= v < 18 for k, v in pairs)    # keys: first half, values: second half
        table = {}
        for k, v in pairs:
            assert table.setdefault(k, v) == v           # one map per example
        assert x[30] == t.copy_prefix and x[31] in table   # "=> key", a key that occurred
        assert y[-1] == table[x[31]]
    assert b.loss_mask.sum(1).tolist() == [1] * 64       # loss=answer


def test_selective_copying_rules():
    t = make_task("selective_copying", {"vocab": 10, "seq_len": 40, "tokens": 5, "test_examples": 8})
    b = t.batch("valid", 0, 8, seed=0)
    for x, y, m in zip(b.inputs.tolist(), b.targets.tolist(), b.score_mask.tolist()):
        data = [v for v in x[:40] if v != 0]
        assert len(data) == 5 and all(2 <= v < 10 for v in data)
        assert x[40:] == [1] * 5 and y[40:] == data and m == [False] * 40 + [True] * 5


def _depth(tokens: list[int]) -> int:
    depth = best = 0
    for tok in tokens:
        if 11 <= tok <= 14:
            depth += 1
            best = max(best, depth)
        elif tok == END:
            depth -= 1
    return best


def test_listops_rules():
    t = ListOps(min_length=30, max_length=120, max_depth=4, valid_examples=40)
    for j in range(40):
        row, label = t.example("valid", j)
        tokens = [int(v) for v in row if v != 0]
        assert 30 < len(tokens) < 120 and len(row) == 120
        assert evaluate(tokens) == label                 # an independent reader agrees
        assert _depth(tokens) <= 4 - 1                   # operators only above max_depth
        assert all(0 < v <= 15 for v in tokens)
    assert evaluate([13, 2, 3, END]) == 1               # MED of the digits 1, 2: int(1.5) = 1
    assert evaluate([14, 10, 10, END]) == 8              # SUM_MOD: (9 + 9) % 10
    with pytest.raises(SeqError, match="min_length"):
        ListOps(min_length=10, max_length=5)


def test_batches_are_functions_of_seed_and_index():
    t = make_task("associative_recall", {"train_examples": 10, "seq_len": 8})
    a, b = t.batch("train", 3, 4, seed=1), t.batch("train", 3, 4, seed=1)
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, t.batch("train", 3, 4, seed=2).inputs)
    epoch = torch.cat([t.batch("train", i, 5, seed=1).inputs for i in range(2)])   # 10 examples = one epoch
    assert len({tuple(r) for r in epoch.tolist()}) == len({tuple(t._get("train", j)[0]) for j in range(10)})


def test_text_split_by_file():
    from seqdsl.training.tasks.text import split_of, stdlib_files

    files = stdlib_files()
    assert {s for _, s in files} == {"train", "valid", "test"}
    assert all(split_of(rel) == s for rel, s in files[:50])
    t = make_task("text_lm", {"length": 32, "eval_windows": 4})
    b = t.batch("valid", 1, 2, seed=0)                   # the small split only: reading all of it takes seconds
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1]) and int(b.inputs.max()) < 256
    assert torch.equal(b.inputs, t.batch("valid", 1, 2, seed=5).inputs)   # evaluation windows are fixed
    c = make_task("text_classify", {"length": 64, "classes": 4})
    assert c.layout.outputs == 4 and not set(c.files["train"]) & set(c.files["valid"])


def test_digits_or_skip():
    if importlib.util.find_spec("sklearn") is None:     # find_spec: importing scikit-learn takes seconds
        pytest.skip("scikit-learn is not installed (the test extra installs it)")
    t = make_task("digits")
    b = t.batch("valid", 0, 16, seed=0)
    assert b.inputs.shape == (16, 64, 1) and float(b.inputs.max()) <= 1.0
    assert sum(t.split_size(s) for s in ("train", "valid", "test")) == 1797
    tok = make_task("digits", {"tokens": 1}).batch("valid", 0, 16, seed=0)
    assert tok.inputs.dtype == torch.long and torch.equal(tok.inputs, (b.inputs[..., 0] * 16).round().long())


def test_unknown_task_and_option():
    with pytest.raises(SeqError, match="unknown task 'nope'; the tasks are"):
        make_task("nope")
    with pytest.raises(SeqError, match="has no option 'size'.*seq_len=40"):
        make_task("induction_heads", {"size": "3"})
    assert set(TASKS) >= {"associative_recall", "induction_heads", "selective_copying", "listops", "text_lm",
                          "text_classify", "digits"}
    assert np.all(make_task("induction_heads", {"seq_len": "16"}).batch("valid", 0, 2, 0).inputs.shape == (2, 17))
