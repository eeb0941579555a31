"""``seqdsl run``: time a forward (and backward) pass on random inputs, with progress."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from seqdsl.errors import SeqError


def _rss_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_model(source, entry, sizes: dict, device: str = "cpu", backward: bool = True, repeat: int = 3,
              backend: str = "auto",
              echo: Callable[[str], None] = print) -> dict:
    """Build the module, run it ``repeat`` times and report the best time and peak memory."""
    import torch
    from rich.progress import Progress

    from seqdsl.api import load

    if device == "cuda" and not torch.cuda.is_available():
        raise SeqError("--device cuda: no CUDA device is available here")
    if device not in ("cpu", "cuda"):
        raise SeqError(f"--device must be cpu or cuda, got {device!r}")
    if repeat < 1:
        raise SeqError(f"--repeat must be at least 1, got {repeat}")
    with Progress(transient=True, disable=not os.isatty(2)) as progress:
        task = progress.add_task("compiling", total=repeat + 2)
        model = load(source, entry, backend=backend, **sizes).to(device)
        inputs = tuple(t.to(device) for t in model.example_inputs(**_numbers(sizes)))
        progress.advance(task)
        for c in model.choices:
            echo(f"  {c.path}: {c.family} -> {c.algorithm}")
        if backward and not any(p.requires_grad for p in model.parameters()):
            # A parameter-free mixer (softmax attention, a functional scan): the backward
            # pass is the gradient of the inputs, as when the mixer sits inside a model.
            floats = [t for t in inputs if t.is_floating_point()]
            if floats:
                inputs = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in inputs)
                echo(f"  no parameters: the backward pass computes the gradients of the {len(floats)} float "
                     f"input(s)")
            else:
                backward = False
                echo("  no parameters and no float inputs: nothing to differentiate, forward only")
        progress.update(task, description="warm-up")
        outs = _step(model, inputs, backward)
        bad = [i for i, o in enumerate(outs) if o.is_floating_point() and not bool(o.isfinite().all())]
        if bad:
            echo(f"  warning: output {', '.join(map(str, bad))} has non-finite values on random normal inputs "
                 "(an input may have a domain, e.g. a negative state matrix or a log-probability gate)")
        progress.advance(task)
        best, peak = float("inf"), None
        for i in range(repeat):
            progress.update(task, description=f"run {i + 1}/{repeat}")
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
            else:
                _rss_peak_reset()
                base = _status("VmRSS:")
            start = time.perf_counter()
            _step(model, inputs, backward)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
            if device == "cuda":
                used = torch.cuda.max_memory_allocated() - base
            else:
                hwm = _status("VmHWM:")
                used = None if hwm is None or base is None else hwm - base
            peak = used if peak is None or (used is not None and used > peak) else peak
            progress.advance(task)
    shapes = ", ".join(f"{tuple(t.shape)}" for t in inputs)
    params = sum(p.numel() for p in model.parameters())
    what = "forward+backward" if backward else "forward"
    mem = "unknown" if peak is None else f"{peak / 2**20:.1f} MiB"
    echo(f"{what} of {model.__class__.__name__} on {device}: best of {repeat} {best * 1e3:.2f} ms, "
         f"peak extra memory {mem}; inputs {shapes}; {params:,} parameters")
    return {"seconds": best, "peak_bytes": peak, "params": params}


def _numbers(sizes: dict) -> dict[str, int]:
    """The sizes given as whole numbers (``--set N=64``), for the random inputs."""
    out = {}
    for k, v in sizes.items():
        try:
            out[k] = int(str(v))
        except ValueError:
            continue
    return out


def _step(model, inputs, backward: bool) -> tuple:
    """One forward (and backward) pass; returns the outputs, detached."""
    import torch

    if backward:
        model.zero_grad(set_to_none=True)
        for t in inputs:
            t.grad = None
        out = model(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(o.float().square().mean() for o in outs if o.is_floating_point())
        aux = getattr(model, "aux_loss", None)
        if callable(aux):        # the layers' auxiliary losses (MoE balance, z-loss) of this forward
            loss = loss + aux()
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise SeqError("the outputs do not depend on anything differentiable: run with --no-backward")
        loss.backward()
    else:
        with torch.no_grad():
            out = model(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
    return tuple(o.detach() for o in outs)
