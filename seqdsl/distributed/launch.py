"""Starting a sequence-parallel run: a process group here, or P local processes.

``init()`` joins the process group that ``torchrun`` describes in the environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), gloo on CPU and NCCL on GPUs.
``launch(target, nproc, *args)`` starts ``nproc`` local processes (spawned, so nothing of
this process's state is shared), joins them into a gloo group over a free local port, runs
``target(*args)`` in each and returns every rank's result in rank order. ``target`` is a
``"module:function"`` or ``"path/to/file.py:function"`` string, so that a test or a script
can name its own functions without being an installed module.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from seqdsl.errors import SeqError


def init(backend: str | None = None, timeout_s: float = 300.0) -> None:
    """Join the process group described by the environment (torchrun's variables); a no-op
    when one is already initialised. ``backend``: default NCCL with CUDA, else gloo."""
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def resolve(target: str):
    """The function a ``"module:function"`` or ``"file.py:function"`` string names."""
    where, _, name = target.rpartition(":")
    if not where or not name:
        raise ValueError(f"a target is 'module:function' or 'file.py:function', got {target!r}")
    if where.endswith(".py"):
        path = Path(where).resolve()
        spec = importlib.util.spec_from_file_location(f"_seqdsl_target_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, target: str, args: tuple, out_dir: str, threads: int,
            backend: str, timeout_s: float) -> None:
    torch.set_num_threads(threads)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "nccl":
        torch.cuda.set_device(rank)             # one GPU per rank
    dist.init_process_group(backend, rank=rank, world_size=nproc, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        try:
            result = resolve(target)(*args)
        except SeqError as err:                 # the user's error, not a crash: launch() raises it
            with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
                f.write(str(err))
            raise
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def launch(target: str, nproc: int, *args: Any, threads: int = 1, backend: str = "gloo",
           timeout_s: float | None = None, preload: tuple[str, ...] = ()) -> list[Any]:
    """Run ``target(*args)`` in ``nproc`` local processes joined into one group (``backend``:
    gloo, or nccl with rank r on GPU r); their results (picklable) in rank order. A rank that
    raises ``SeqError`` raises it here; another failure raises with its traceback.
    ``timeout_s``: how long a collective waits for the other ranks (default
    ``$SEQDSL_DIST_TIMEOUT`` or 300 s). ``preload``: more modules for the process that forks
    the ranks to import once (when this process starts it: the first launch)."""
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    if timeout_s is None:
        timeout_s = float(os.environ.get("SEQDSL_DIST_TIMEOUT", "300"))
    with tempfile.TemporaryDirectory(prefix="seqdsl-launch-") as out:
        # forkserver: one fresh server process imports torch and the algorithms once, then
        # forks the ranks (spawning imports torch in each; forking this process could
        # inherit its OpenMP thread pool, which does not survive a fork)
        import multiprocessing
        multiprocessing.set_forkserver_preload(["torch", "seqdsl.distributed", "codegen.distributed.softmax",
                                                "codegen.distributed.linear", "codegen.distributed.toeplitz",
                                                *preload])
        try:
            mp.start_processes(_worker, args=(nproc, _free_port(), target, args, out, threads, backend, timeout_s),
                               nprocs=nproc, join=True, start_method="forkserver")
        except ProcessException:
            for r in range(nproc):
                path = os.path.join(out, f"rank{r}.err")
                if os.path.exists(path):
                    with open(path) as f:
                        raise SeqError(f.read().removeprefix("error: ")) from None
            raise
        results = []
        for r in range(nproc):
            with open(os.path.join(out, f"rank{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results
