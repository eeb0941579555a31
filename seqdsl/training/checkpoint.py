"""Checkpoints written atomically and read back whole.

``save`` writes to a temporary file in the same folder, flushes and fsyncs it, then
``os.replace``s it over the checkpoint: a run killed at any moment leaves either the
previous checkpoint or the new one, never a torn file (a leftover ``.tmp`` is ignored and
overwritten by the next save). A checkpoint holds everything the next step depends on:
model, optimizer and scheduler states, the torch RNG state, the step (the data position:
batches are a function of the step) and the metrics so far.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from seqdsl.errors import SeqError

NAME = "checkpoint.pt"


def save(state: dict, folder: Path) -> Path:
    """Write ``state`` to ``folder/checkpoint.pt`` atomically; return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NAME
    tmp = folder / (NAME + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:                        # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load(folder: Path) -> dict:
    """The checkpoint in ``folder``; a SeqError when there is none or it cannot be read."""
    path = folder / NAME
    if not path.is_file():
        raise SeqError(f"--resume: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same answer to the user
        raise SeqError(f"--resume: the checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
