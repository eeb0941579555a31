"""``seqdsl run FILE --nproc P``: the forward (and backward) pass of a module with its
sequence split over P local processes (gloo), timed; what rank 0 prints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from seqdsl.distributed.launch import launch
from seqdsl.errors import SeqError
from seqdsl.runner import _status


def _seq_axis(x) -> int:
    return 1 if x.dim() == 2 else x.dim() - 2


def worker(source: str, entry: str | None, sizes: dict, numbers: dict, backward: bool, repeat: int,
           layout: str) -> dict:
    """One rank: load, shard the example inputs along N, run ``repeat`` times in the block."""
    import torch

    import seqdsl
    import seqdsl.distributed as sd
    from seqdsl.runner import _step

    model = seqdsl.load(source, entry, **sizes)
    first = model.INPUTS[0][2] if model.INPUTS else ()
    seq = first[1] if len(first) == 2 else first[-2] if first else None
    if isinstance(seq, tuple) and seq[0] in sizes:      # N given: read it at call time (tables built for it)
        model = seqdsl.load(source, entry, at_call=(seq[0],), **sizes)
    inputs = model.example_inputs(**numbers)            # the same on every rank (seeded)
    with sd.sequence_parallel(layout=layout):
        local = tuple(sd.shard(x, _seq_axis(x)) for x in inputs)
        if backward and not any(p.requires_grad for p in model.parameters()):
            local = tuple(t.requires_grad_(True) if t.is_floating_point() else t for t in local)
        _step(model, local, backward)                   # warm-up
        base = _status("VmRSS:")
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            _step(model, local, backward)
            best = min(best, time.perf_counter() - start)
    hwm = _status("VmHWM:")
    return {"seconds": best, "rows": int(local[0].shape[_seq_axis(local[0])]),
            "n": int(inputs[0].shape[_seq_axis(inputs[0])]),
            "peak_bytes": None if hwm is None or base is None else hwm - base,
            "threads": torch.get_num_threads()}


def run_distributed(source, entry, sizes: dict, nproc: int, backward: bool = True, repeat: int = 3,
                    layout: str = "contiguous", echo: Callable[[str], None] = print) -> list[dict]:
    """Run FILE on ``nproc`` local processes with the sequence split along N; print each rank's
    best time and the slowest."""
    from seqdsl.runner import _numbers

    if nproc < 1:
        raise SeqError(f"--nproc must be at least 1, got {nproc}")
    if repeat < 1:
        raise SeqError(f"--repeat must be at least 1, got {repeat}")
    threads = max(1, (os.cpu_count() or 1) // nproc)
    results = launch("seqdsl.distributed.run:worker", nproc, str(source), entry, sizes, _numbers(sizes),
                     backward, repeat, layout, threads=threads)
    what = "forward+backward" if backward else "forward"
    for r, res in enumerate(results):
        mem = "unknown" if res["peak_bytes"] is None else f"{res['peak_bytes'] / 2**20:.1f} MiB"
        echo(f"  rank {r}: {res['rows']} of N = {res['n']} rows, best of {repeat} {res['seconds'] * 1e3:.2f} ms, "
             f"peak extra memory {mem}")
    slowest = max(res["seconds"] for res in results)
    echo(f"{what} on {nproc} processes ({layout} layout, gloo, {threads} thread(s) each): "
         f"{slowest * 1e3:.2f} ms (slowest rank), {slowest / results[0]['n'] * 1e6:.3f} µs per token")
    return results
