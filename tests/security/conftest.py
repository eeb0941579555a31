"""The hostile-input harness: cases run in a fresh process (tests/security/driver.py) under
a wall-clock timeout and an address-space cap, so that a hang or a memory blow-up fails the
test instead of taking the machine down; each case also has its own time limit inside.

The ``run_batch`` fixture is ``run_batch(cases, cwd, env=None) -> {name: outcome}`` with
``cases`` a dict name -> code (see driver.py) and each outcome a dict:
``{"kind": "ok" | "SeqError" | "other" | "timeout" | "crashed", "seconds", ...}``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")
MEMORY_CAP = 6 << 30        # address space of the whole batch: torch alone reserves ~2 GB of it
BATCH_SECONDS = 240         # all cases together; each one also has driver.CASE_SECONDS


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_batch(cases: dict[str, str], cwd: Path, env: dict | None = None,
              slow: dict[str, int] | None = None) -> dict[str, dict]:
    """Run ``cases`` (name -> code); ``slow`` raises the time limit of some (name -> seconds)."""
    payload = json.dumps([{"name": k, "code": v, **({"seconds": slow[k]} if k in (slow or {}) else {})}
                          for k, v in cases.items()])
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("SEQDSL_DEBUG", None)
    try:
        proc = subprocess.run([sys.executable, str(DRIVER)], input=payload, cwd=cwd, env=full_env, text=True,
                              capture_output=True, timeout=BATCH_SECONDS, preexec_fn=_limits)
        out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = f"the batch ran past {BATCH_SECONDS} s"
    results: dict[str, dict] = {}
    running = None
    for line in out.splitlines():
        if line.startswith("start "):
            running = line[6:]
        elif line.startswith("{"):
            r = json.loads(line)
            results[r.pop("name")] = r
            running = None
    for name in cases:
        if name not in results:
            why = f"the process died while it ran {running}" if running else "never ran"
            results[name] = {"kind": "crashed", "why": why, "stderr": err[-3000:]}
    return results


@pytest.fixture(scope="session")
def batch():
    return run_batch
