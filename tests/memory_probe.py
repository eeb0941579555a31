"""Peak resident memory that one call adds, measured by the OS in a fresh process: the one
probe that every memory test shares.

Peak = VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before the call
(the call's output and temporaries count, its inputs do not); best of ``repeat`` calls after
a warm-up (libraries allocate their workspaces once, plans are cached). Linux only.

A test describes a case as a function in its own module that builds the inputs and returns
the call to measure: ``run`` or ``(run, warm_up)``, both without arguments. The test asks
for the ``peak_memory`` fixture (tests/conftest.py), which skips where the peak cannot be
read and runs, in a fresh process,

    python tests/memory_probe.py CASE_FILE CASE ARGS_JSON [ARGS_JSON ...]

printing one peak (bytes) per ARGS_JSON (a JSON list of positional arguments for CASE).
The case file is loaded by path (the suite runs with ``--import-mode=importlib``; test
modules cannot import each other), so it may be the test module itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


def unavailable() -> str | None:
    """Why the peak resident memory cannot be measured here, or None."""
    if not sys.platform.startswith("linux"):
        return f"peak RSS is read from /proc (Linux only); this is {sys.platform}"
    if not os.access("/proc/self/clear_refs", os.W_OK):
        return "/proc/self/clear_refs is not writable here, so the peak RSS cannot be reset"
    return None


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_rss(run: Callable[[], object], warm_up: Callable[[], object] | None = None, repeat: int = 2) -> int:
    """Bytes of resident memory that ``run()`` adds at its peak, in this process (no grad):
    the smallest of ``repeat`` measurements after ``warm_up()`` (default: ``run`` itself)."""
    import torch

    with torch.no_grad():
        (warm_up or run)()
        best = None
        for _ in range(repeat):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                      # reset VmHWM to the current resident size
            base = _status("VmRSS:")
            out = run()
            peak = _status("VmHWM:") - base
            del out
            best = peak if best is None else min(best, peak)
    return best


def measure(case_file: str | Path, case: str, *arg_sets: Sequence, env: dict[str, str] | None = None,
            timeout: float = 300) -> list[int]:
    """Peak bytes of ``case(*args)``'s call for each ``args`` in ``arg_sets``, all in one
    fresh process (one thread). ``env`` adds environment variables, e.g. glibc's
    ``MALLOC_MMAP_THRESHOLD_`` so that freed buffers leave the process and every call's own
    allocations show in its peak."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    cmd = [sys.executable, str(HERE), str(case_file), case, *(json.dumps(list(args)) for args in arg_sets)]
    out = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {case} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    peaks = [int(line) for line in out.stdout.split()]
    assert len(peaks) == len(arg_sets), out.stdout
    return peaks


def _load(path: str):
    spec = importlib.util.spec_from_file_location("memory_probe_case", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    if sys.path and Path(sys.path[0]).resolve() == HERE.parent:
        del sys.path[0]                           # tests/ must not shadow the packages under test
    import torch

    torch.set_num_threads(1)
    case_file, case, *arg_sets = sys.argv[1:]
    make = getattr(_load(case_file), case)
    for args in arg_sets:
        torch.manual_seed(0)
        made = make(*json.loads(args))
        run, warm_up = made if isinstance(made, tuple) else (made, None)
        print(peak_rss(run, warm_up), flush=True)
        del made, run, warm_up


if __name__ == "__main__":
    main()
