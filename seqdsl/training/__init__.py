"""Training and comparing .seq models on long-sequence tasks (docs/training.md).

``seqdsl.train("examples/models/h3.seq", "associative_recall", steps=500, D=64, L=2)``
trains a file's model on a task; ``seqdsl compare A.seq B.seq --task T`` trains several
with the same budget. Tasks are in ``seqdsl.training.tasks`` (``TASKS``).
"""

from seqdsl.training.loop import TrainConfig, TrainResult, run, train
from seqdsl.training.tasks import TASKS, make_task

__all__ = ["TASKS", "TrainConfig", "TrainResult", "make_task", "run", "train"]
