"""Training and comparing .seq models on long-sequence tasks (docs/training.md).

``seqdsl.train("examples/models/h3.seq", "associative_recall", steps=500, D=64, L=2)``
trains a file's model on a task; ``seqdsl compare A.seq B.seq --task T`` trains several
with the same budget. Tasks are in ``seqdsl.training.tasks`` (``TASKS``).
"""

from __future__ import annotations

import importlib

__all__ = ["TASKS", "TrainConfig", "TrainResult", "make_task", "run", "train"]

# Imported on first use: the command line registers `seqdsl train` through
# seqdsl.training.commands, and must start (check, analyze, graph) where torch is absent.
_HOME = {"TrainConfig": "loop", "TrainResult": "loop", "run": "loop", "train": "loop",
         "TASKS": "tasks", "make_task": "tasks"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"seqdsl.training.{_HOME[name]}"), name)
    raise AttributeError(f"module 'seqdsl.training' has no attribute {name!r}")
