"""Write a generated module to disk and import it: what ``seqdsl compile`` writes is what
``seqdsl.load`` runs.

The cache (``$SEQDSL_CACHE/torch``, default ``~/.cache/seqdsl/torch``) is shared by every
process of a user, so several may write and import the same new model at once:

- every file is written to a temporary file in its own directory, then renamed over its
  final name (``os.replace``, atomic on POSIX and Windows): a reader sees the old file or
  the whole new one, never an empty or a half-written one;
- a cached file is named by the hash of its source and checked byte for byte against the
  source before it is imported (rewritten when it differs: truncated by a crash, edited);
  the module then runs from those verified bytes, not from a second read of the file, and
  no bytecode is cached beside it (a stale ``.pyc`` could not stand in for it);
- a module whose import raised is removed from ``sys.modules``: the next load runs it
  again instead of returning a half-initialised module.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import secrets
import sys
import threading
from pathlib import Path
from types import ModuleType

_LOCK = threading.RLock()      # one import at a time in a process (a generated module may load another)


def cache_dir() -> Path:
    root = os.environ.get("SEQDSL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "seqdsl")
    path = Path(root) / "torch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and one
    rename: concurrent readers never see a partial file, and concurrent writers of the
    same content leave that content. The temporary file is created like any file (mode
    0666 less the umask) under a name no other writer uses."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.replace(tmp, path)
        except PermissionError:
            # Windows refuses to replace a file another process holds open; if that file
            # already has this content there is nothing to do.
            if _read(path) != data:
                raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_module(source: str, directory: Path, name: str) -> Path:
    """Write ``source`` to ``directory/name.py`` atomically and return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    _write_atomic(path, source.encode("utf-8"))
    return path


class _VerifiedLoader(importlib.abc.SourceLoader):
    """Runs the module from bytes already read and checked (``path`` is its ``__file__``,
    for tracebacks and ``inspect``); caches no bytecode."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data = str(path), data

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        if path == self.path:
            return self.data
        with open(path, "rb") as f:
            return f.read()


def _import(path: Path, data: bytes, name: str) -> ModuleType:
    """Import ``data`` (the content of ``path``) as the module ``name``; on an error the
    module does not stay in ``sys.modules``."""
    with _LOCK:
        module = sys.modules.get(name)
        if module is not None:
            return module
        loader = _VerifiedLoader(path, data)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module          # while it runs (dataclasses, pickling look it up)
        try:
            loader.exec_module(module)
        except BaseException:
            if sys.modules.get(name) is module:
                del sys.modules[name]
            raise
        return module


def import_file(path: Path) -> ModuleType:
    """Import a generated file as a fresh module (its name is unique to its content)."""
    path = Path(path)
    data = path.read_bytes()
    return _import(path, data, f"seqdsl_generated_{path.stem}_{_digest(data)[:12]}")


def load_source(source: str, stem: str) -> ModuleType:
    """Import ``source`` through the cache: written once (atomically) as
    ``<stem>_<hash>.py``, verified against ``source`` at every load."""
    data = source.encode("utf-8")
    digest = _digest(data)
    path = cache_dir() / f"{stem}_{digest}.py"
    if _read(path) != data:
        _write_atomic(path, data)
    return _import(path, data, f"seqdsl_generated_{stem}_{digest}")
