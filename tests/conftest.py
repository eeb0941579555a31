"""Shared test options and fixtures.

``--update-golden`` (or SEQDSL_UPDATE_GOLDEN=1) rewrites golden files instead of comparing;
the ``golden`` fixture does the comparison for every golden-file test.

``EXAMPLES`` is every ``examples/**/*.seq`` found at collection time (others add examples
while the suite grows): a test that takes an argument named ``example`` runs once per file,
with ids like ``mixers-gla`` (test modules cannot import this file: the suite runs with
``--import-mode=importlib``).
The ``checked_example`` fixture checks an example at its default sizes once per session, so
that the many tests that read an example's graph do not re-elaborate it.
Hypothesis runs under the profile ``suite`` (fixed draws) unless SEQDSL_HYPOTHESIS names
another (``explore``: fresh draws each run).
The ``peak_memory`` fixture measures the peak resident memory of a call in a fresh process
(tests/memory_probe.py, shared by every memory test).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on a CPU through the interpreter; the variable must be set before any
# @triton.jit function is defined, so here, before seqdsl and the kernels are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

import seqdsl  # noqa: E402

# Property tests draw the same examples on every run, so that the suite passes or fails by
# the code and never by the draw. Fresh draws: SEQDSL_HYPOTHESIS=explore (or
# --hypothesis-seed=N); a longer search of the fuzzers: scripts/fuzz.py.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("SEQDSL_HYPOTHESIS", "suite"))

# Under pytest-xdist (scripts/test.sh) each worker gets its share of the cores, so that the
# workers' torch thread pools do not fight over them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.seq"))


def example_id(path: Path) -> str:
    """``mixers-gla`` for examples/mixers/gla.seq: readable and unique across folders."""
    return "-".join(path.relative_to(ROOT / "examples").with_suffix("").parts)


def pytest_generate_tests(metafunc):
    if "example" in metafunc.fixturenames:
        metafunc.parametrize("example", EXAMPLES, ids=[example_id(p) for p in EXAMPLES])


@functools.cache
def _checked(path: Path) -> seqdsl.Checked:
    return seqdsl.check(path)


@pytest.fixture(scope="session")
def checked_example():
    """``checked_example(path)``: ``seqdsl.check(path)`` at the default sizes, cached for the
    session. Read the result; do not mutate its graph."""
    return _checked


@pytest.fixture
def check_text():
    """``check_text(src, **sizes)``: check a program given as text (entry: its model, else
    its last definition)."""

    def run(src: str, entry: str | None = None, **sizes) -> seqdsl.Checked:
        return seqdsl.check(src if src.endswith("\n") else src + "\n", entry, **sizes)

    return run


# Folders whose many small tensors run on one torch thread: at these sizes threads buy
# nothing, and on a shared machine (more runnable processes than cores) OpenMP's barriers
# between small ops turn a 10 s folder into minutes (a decoding step of a small model: ~40x
# slower on two threads). Scoped to each test and restored afterwards.
ONE_THREAD = ("tests/decode/", "tests/codegen/toeplitz/")


@pytest.fixture(autouse=True)
def _one_thread_where_asked(request):
    where = str(Path(str(request.node.path)).relative_to(ROOT)) if str(request.node.path).startswith(str(ROOT)) else ""
    if not where.startswith(ONE_THREAD):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files (review the diff before committing)")


def update_golden(config) -> bool:
    return bool(config.getoption("--update-golden")) or os.environ.get("SEQDSL_UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden(request):
    """``golden(path, text)``: compare ``text`` with the golden file, or write it when updating."""

    def compare(path: Path, text: str) -> None:
        if update_golden(request.config) or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if not update_golden(request.config):
                pytest.fail(f"wrote the missing golden {path.name}: review it and rerun")
            return
        expected = path.read_text()
        if text != expected:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "now"))
            pytest.fail(f"{path.name} changed (rerun with --update-golden if intended)\n{diff[:4000]}")

    return compare


@functools.cache
def _memory_probe():
    spec = importlib.util.spec_from_file_location("memory_probe", ROOT / "tests" / "memory_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def peak_memory():
    """``peak_memory(case_file, case, *arg_sets, env=None)``: peak bytes that the call
    ``case(*args)`` (a function in ``case_file`` returning ``run`` or ``(run, warm_up)``) adds,
    one per args, measured in a fresh process by tests/memory_probe.py. Skips (printing why)
    where the peak resident memory cannot be read."""
    probe = _memory_probe()
    reason = probe.unavailable()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    return probe.measure
