"""The built wheel works on its own: grammar inside the package, console script, dependencies.

An editable install reads ``grammar/`` from the checkout, so only a wheel installed into a
plain virtual environment (no system site-packages, run from outside the repository)
shows whether the package data and the dependency list are right.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixers" / "softmax_attention.seq"


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", out]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.append("--no-isolation")        # the backend is here already: no download
    if importlib.util.find_spec("build") is None:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out]
    _run([*cmd, ROOT], cwd=ROOT)
    wheels = list(out.glob("seqdsl-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A plain venv with the wheel and the dependencies its metadata declares."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # With its dependencies (not --no-deps): a missing entry in `dependencies` fails here.
    _run([bindir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
         cwd=env_dir)
    return bindir


@pytest.mark.slow
def test_wheel_ships_the_grammar(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "seqdsl/grammar/seq.lark" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_checks_an_example(installed, tmp_path):
    where = _run([installed / "python", "-c", "import seqdsl; print(seqdsl.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout   # not the checkout
    proc = _run([installed / "seqdsl", "check", EXAMPLE], cwd=tmp_path)
    assert proc.stdout.startswith(f"ok: {EXAMPLE}"), proc.stdout
    assert "mixers: 1" in proc.stdout


@pytest.mark.slow
def test_installed_wheel_draws_a_graph(installed, tmp_path):
    proc = _run([installed / "seqdsl", "graph", EXAMPLE, "-o", tmp_path / "g.svg"], cwd=tmp_path)
    assert "drawn with" in proc.stdout
    assert "<svg" in (tmp_path / "g.svg").read_text()[:500]
