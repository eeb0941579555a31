"""Write a generated module to disk and import it: what ``seqdsl compile`` writes is what
``seqdsl.load`` runs."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    root = os.environ.get("SEQDSL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "seqdsl")
    path = Path(root) / "torch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_module(source: str, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    return path


def import_file(path: Path) -> ModuleType:
    """Import a generated file as a fresh module (its name is unique to its content)."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    name = f"seqdsl_generated_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_source(source: str, stem: str) -> ModuleType:
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    return import_file(write_module(source, cache_dir(), f"{stem}_{digest}"))
