"""The generated-module cache under concurrency (codegen/torch/load.py, issue 11).

``test_processes_loading_the_same_new_models_at_once``: 8 processes each load the same 20
new models, for 20 rounds. Every round uses a fresh ``SEQDSL_CACHE`` and starts at a
barrier, so the processes write and import the same new files at the same moment. The test
expects zero failures. Round 0 goes through ``seqdsl.load`` (parse, check, emit, load)
with 20 small ``.seq`` models that differ by a constant. Rounds 1–19 call ``load_source``
directly with 20 sources of ~6 kB each: running ``seqdsl.load`` on every round would spend
the time in the checker, not in the cache. The 8 workers are forked from one subprocess
that imports seqdsl and torch once, before any torch operation runs; 8 separate torch
imports would take most of the test's time on a 2-core machine. With the former
``write_text`` cache this test fails: about 100 of the 3200 loads imported an empty
or partial file.

The other tests pin the single-process rules: a module whose import failed is not kept in
``sys.modules``; a cached file that differs from its source is rewritten before import;
``write_module`` (``seqdsl compile -o``) leaves no temporary file and honours the umask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codegen.torch import load as L

ROOT = Path(__file__).resolve().parents[2]
PROCS, MODELS, ROUNDS = 8, 20, 20

WORKER = r"""
import json, multiprocessing, os, sys, traceback
procs, models, rounds, root = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def raw_source(r, i):
    # ~6 kB: a checksum over a long literal proves the whole file ran
    data = ", ".join(str((r * 7919 + i * 104729 + j) % 1000003) for j in range(1000))
    return f"VALUE = ({r}, {i})\nDATA = ({data},)\ndef checksum():\n    return sum(DATA) % 1000003\n"

def seq_source(r, i):
    return ("dim B = 1, N = 4, D = 2\n"
            f"model race_{i}(x: [B, N, D]) -> [B, N, D] {{\n  return x * {r * 1000 + i + 1}.0\n}}\n")

def work(index, barrier):
    failures, loads = [], 0
    for r in range(rounds):
        os.environ["SEQDSL_CACHE"] = os.path.join(root, f"cache{r}")
        barrier.wait()                      # every process starts the round's new models at once
        for i in range(models):
            try:
                if r == 0:
                    model = seqdsl.load(seq_source(r, i))
                    ok = float(model(torch.ones(1, 4, 2))[0, 0, 0]) == float(r * 1000 + i + 1)
                else:
                    mod = load_source(raw_source(r, i), f"race_{i}")
                    data = [(r * 7919 + i * 104729 + j) % 1000003 for j in range(1000)]
                    ok = mod.VALUE == (r, i) and mod.checksum() == sum(data) % 1000003
                if not ok:
                    failures.append(f"process {index} round {r} model {i}: wrong module content")
                loads += 1
            except Exception as err:
                failures.append(f"process {index} round {r} model {i}: {type(err).__name__}: {err}"[:300])
    return {"loads": loads, "failures": failures}

# seqdsl and torch are imported once, before any torch operation runs (no thread pool yet:
# forking is safe); each fork is then an independent process with its own sys.modules.
import seqdsl, torch
from codegen.torch.load import load_source

barrier = multiprocessing.get_context("fork").Barrier(procs, timeout=120)
index, children = 0, []
for i in range(1, procs):
    pid = os.fork()
    if pid == 0:
        index, children = i, []
        break
    children.append(pid)
try:
    result = work(index, barrier)
except BaseException:
    barrier.abort()
    result = {"loads": -1, "failures": [f"process {index}: " + traceback.format_exc()[-2000:]]}
with open(os.path.join(root, f"result{index}.json"), "w") as f:
    json.dump(result, f)
if index:
    os._exit(0)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print(json.dumps({"exit_codes": codes}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the workers are forked from one interpreter (POSIX only)")
def test_processes_loading_the_same_new_models_at_once(tmp_path):
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", WORKER, str(PROCS), str(MODELS), str(ROUNDS), str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"exit_codes": [0] * (PROCS - 1)}, run.stderr[-3000:]
    results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(PROCS)]
    failures = [f for r in results for f in r["failures"]]
    assert not failures, f"{len(failures)} failed loads of {PROCS * MODELS * ROUNDS}:\n" + "\n".join(failures[:20])
    assert [r["loads"] for r in results] == [MODELS * ROUNDS] * PROCS
    for rnd in range(ROUNDS):     # every round's cache holds its models, and no temporary file
        files = sorted(p.name for p in (tmp_path / f"cache{rnd}" / "torch").iterdir())
        assert len(files) == MODELS and all(f.endswith(".py") and not f.startswith(".") for f in files), files
    print(f"{PROCS} processes x {MODELS} models x {ROUNDS} rounds: {time.monotonic() - start:.1f} s")


def test_a_module_that_failed_to_import_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_CACHE", str(tmp_path))
    flag = tmp_path / "fail"
    flag.write_text("")
    src = f"import os\nif os.path.exists({str(flag)!r}):\n    raise RuntimeError('first run fails')\nVALUE = 7\n"
    with pytest.raises(RuntimeError, match="first run fails"):
        L.load_source(src, "flaky")
    assert not [name for name, m in sys.modules.items() if name.startswith("seqdsl_generated_flaky")]
    flag.unlink()
    assert L.load_source(src, "flaky").VALUE == 7            # run again, not the half-initialised module
    assert L.load_source(src, "flaky") is L.load_source(src, "flaky")


def test_a_cached_file_that_differs_from_its_source_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQDSL_CACHE", str(tmp_path))
    src = "VALUE = 'whole'\n" + "# padding\n" * 100
    first = L.load_source(src, "damaged")
    (path,) = (tmp_path / "torch").glob("damaged_*.py")
    assert path.read_text() == src and first.__file__ == str(path)
    for damage in ("", src[:40], "VALUE = 'evil'\n"):      # emptied, truncated, replaced
        path.write_text(damage)
        L.load_source(src, "damaged")
        assert path.read_text() == src
    # a fresh process (nothing in sys.modules) runs the verified text, not the damaged file
    path.write_text("VALUE = 'evil'\n")
    code = f"from codegen.torch.load import load_source\nprint(load_source({src!r}, 'damaged').VALUE)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "SEQDSL_CACHE": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "whole" and path.read_text() == src


def test_write_module_is_atomic_and_leaves_nothing_else(tmp_path):
    old = os.umask(0o022)
    try:
        path = L.write_module("VALUE = 1\n", tmp_path / "out", "m")
        assert path == tmp_path / "out" / "m.py" and path.read_text() == "VALUE = 1\n"
        assert path.stat().st_mode & 0o777 == 0o644
        ino = path.stat().st_ino
        assert L.write_module("VALUE = 2\n", tmp_path / "out", "m") == path
        assert path.stat().st_ino != ino           # a new file renamed over the old one, not rewritten in place
        assert L.import_file(path).VALUE == 2
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.py"]   # no temporary file, no __pycache__
    finally:
        os.umask(old)
