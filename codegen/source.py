"""The only ways text from an input reaches generated Python source.

A ``.seq`` file, its path, the sizes given with ``--set`` and every name in the layer
graph are data written by someone else. Emitters never paste such text into generated
source directly: every value goes through :func:`literal` (a Python literal, ``repr`` of
a checked type), every name through :func:`ident` (``[A-Za-z_][A-Za-z0-9_]*``, never a
keyword) and every free text in a comment or docstring through :func:`comment` (one line,
printable, no quote that could close a docstring). A test generates modules for hostile
names, paths, strings and numbers and proves none of them runs.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")


def ident(text: str) -> str:
    """A Python identifier made from ``text``: other characters become ``_``; a leading
    digit gets ``t_``; a keyword gets a trailing ``_``."""
    name = _NOT_IDENT.sub("_", str(text)).strip("_") or "t"
    if name[0].isdigit():
        name = "t_" + name
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        name += "_"
    return name


def literal(value) -> str:
    """``value`` as a Python literal. Only plain data is accepted (str, bool, int, finite
    float, None, and tuples/lists/dicts of these); anything else is a bug of the emitter."""
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return repr(float(value))
    if isinstance(value, tuple):
        items = [literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal for {type(value).__name__}")


def comment(text: str, limit: int = 200) -> str:
    """``text`` made safe for a comment or a docstring line: one line (line breaks and
    other control or separator characters become ``?``), no backslash or quote that could
    end a string, at most ``limit`` characters."""
    out = []
    for ch in str(text):
        if ch in "\\\"'" or not ch.isprintable():
            out.append("?")
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"


# Names a generated module defines or imports at its top, and Python's builtins: no local,
# dim or class of a generated file may take one of them.
RESERVED = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {
    "self", "torch", "F", "nn", "rt", "M", "math", "triton", "tl", "given_attention", "softmax_attention",
    "linear_attention", "OuterGate", "toeplitz_mix", "ssm_init_factory", "rt_ssm_init"}
