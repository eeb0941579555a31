"""The training tasks, by name. ``make_task("listops", {"max_length": "512"})`` builds one
with its options (strings from the command line are converted to the option's type)."""

from __future__ import annotations

import inspect

from seqdsl.errors import SeqError
from seqdsl.training.tasks.base import Batch, Layout, Task
from seqdsl.training.tasks.image import Digits
from seqdsl.training.tasks.listops import ListOps
from seqdsl.training.tasks.synthetic import AssociativeRecall, InductionHeads, SelectiveCopying
from seqdsl.training.tasks.text import TextClassify, TextLM

TASKS: dict[str, type[Task]] = {t.name: t for t in (
    AssociativeRecall, InductionHeads, SelectiveCopying, ListOps, TextLM, TextClassify, Digits)}


def task_options(cls: type[Task]) -> dict[str, object]:
    """The options a task accepts, with their defaults (its constructor's keywords, those of
    its base classes included)."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out[name] = p.default
    return out


def make_task(name: str, options: dict[str, object] | None = None) -> Task:
    """The task ``name`` with ``options`` (values as strings or numbers)."""
    if name not in TASKS:
        raise SeqError(f"unknown task {name!r}; the tasks are: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    known = task_options(cls)
    values = {}
    for key, raw in (options or {}).items():
        if key not in known:
            raise SeqError(f"task {name} has no option {key!r}; its options are: "
                           + ", ".join(f"{k}={v}" for k, v in known.items()))
        default = known[key]
        try:
            values[key] = type(default)(raw) if isinstance(default, (int, float)) and not isinstance(raw, type(
                default)) else raw
        except ValueError:
            raise SeqError(f"task {name}: option {key} expects a {type(default).__name__}, got {raw!r}") from None
    return cls(**values)


__all__ = ["TASKS", "Batch", "Layout", "Task", "make_task", "task_options"]
