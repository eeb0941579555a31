"""Signatures of builtins: argument binding and coercion, with precise errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy

from seqdsl.check.values import Func, ListV, Scalar, Str, Struct, Tensor, Word, describe
from seqdsl.errors import Pos, SeqError

REQUIRED = object()


@dataclass(frozen=True)
class P:
    """One parameter of a builtin. kinds:
    tensor, scalar (symbolic number), dim (positive size), int (known integer),
    bool (known), str, choice (one of ``choices``), mask, score, feature, kernel, bias,
    init, func, tensors (a list of tensors), any."""

    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    optional: bool = False   # None allowed (absent)


@dataclass(frozen=True)
class Builtin:
    name: str
    params: tuple[P, ...]
    fn: Callable
    doc: str
    group: str


def bind(el, b: Builtin, args: list, kwargs: dict[str, tuple[Any, Pos]], pos: Pos) -> dict[str, Any]:
    """Match arguments to parameters and coerce each to its kind."""
    if len(args) > len(b.params):
        raise SeqError(f"{b.name}() takes at most {len(b.params)} argument(s), {len(args)} given", pos,
                       hint=usage(b))
    raw: dict[str, tuple[Any, Pos]] = {}
    for p, a in zip(b.params, args):
        raw[p.name] = (a, pos)
    names = {p.name for p in b.params}
    extra = next((p for p in b.params if p.kind == "sizes"), None)
    sizes: dict[str, Any] = {}
    for k, (v, kpos) in kwargs.items():
        if k not in names and extra is not None:
            if not isinstance(v, Scalar):
                raise SeqError(f"{b.name}(): size {k!r} must be a number, got {describe(v)}", kpos)
            sizes[k] = v.expr
            continue
        if k not in names:
            raise SeqError(f"{b.name}() has no parameter {k!r}", kpos, hint=usage(b))
        if k in raw:
            raise SeqError(f"{b.name}(): argument {k!r} given twice", kpos)
        raw[k] = (v, kpos)
    out: dict[str, Any] = {}
    for p in b.params:
        if p.kind == "sizes":
            out[p.name] = sizes
            continue
        if p.name not in raw:
            if p.default is REQUIRED:
                raise SeqError(f"{b.name}() is missing argument {p.name!r}", pos, hint=usage(b))
            # sizes stay exact: a default of 64 is sympy's 64, so that 64 / 2 is 32, not 32.0
            out[p.name] = sympy.Integer(p.default) if p.kind in ("scalar", "dim") and type(p.default) is int \
                else p.default
            continue
        v, vpos = raw[p.name]
        out[p.name] = coerce(el, b, p, v, vpos)
    return out


def usage(b: Builtin) -> str:
    parts = []
    for p in b.params:
        if p.kind == "sizes":
            parts.append("**sizes")
        elif p.default is REQUIRED:
            parts.append(p.name)
        else:
            d = "none" if p.default is None else p.default
            if isinstance(d, bool):
                d = str(d).lower()
            parts.append(f"{p.name}={d}")
    return f"{b.name}({', '.join(parts)})"


def coerce(el, b: Builtin, p: P, v: Any, pos: Pos) -> Any:
    where = f"{b.name}(): {p.name!r}"
    if isinstance(v, Word) and p.kind not in ("choice", "feature"):
        raise el.unknown_word(v)
    k = p.kind
    if k == "any":
        return v
    if k == "tensor":
        if isinstance(v, Tensor):
            return v
        raise SeqError(f"{where} must be a tensor, got {describe(v)}", pos)
    if k in ("scalar", "dim", "int", "bool"):
        if not isinstance(v, Scalar):
            raise SeqError(f"{where} must be a number, got {describe(v)}", pos)
        e = v.expr
        if k == "scalar":
            return e
        if k == "dim":
            el.check_dim(e, pos, where)
            if e.is_number and not e.is_integer:
                raise SeqError(f"{where} must be a whole number, got {e}", pos)
            return e
        if k == "int":
            return el.concrete_int(e, pos, where)
        return el.truth(v, pos, where)
    if k == "str":
        if isinstance(v, Str):
            return v.value
        raise SeqError(f"{where} must be a string, got {describe(v)}", pos)
    if k == "choice":
        name = v.name if isinstance(v, (Word, Func)) else v.value if isinstance(v, Str) else None
        if name is None or name not in p.choices:
            got = name if name is not None else describe(v)
            raise SeqError(f"{where} must be one of {', '.join(p.choices)}; got {got}", pos)
        return name
    if k in ("mask", "score", "feature", "kernel", "bias", "init"):
        if isinstance(v, Struct) and v.what == k:
            return v
        if k == "feature" and isinstance(v, (Word, Func)):
            from seqdsl.check.builtins import feature_named
            return feature_named(el, v, pos)
        if k == "init" and isinstance(v, Scalar):
            from seqdsl.check.builtins import constant_init
            return Struct("init", constant_init(v))
        raise SeqError(f"{where} must be a {k}, got {describe(v)}", pos)
    if k == "func":
        if isinstance(v, Func) and v.definition is not None:
            return v
        raise SeqError(f"{where} must name a mixer or block of the file, got {describe(v)}", pos)
    if k == "tensors":
        if isinstance(v, ListV) and v.items and all(isinstance(i, Tensor) for i in v.items):
            return list(v.items)
        raise SeqError(f"{where} must be a list of tensors, got {describe(v)}", pos)
    raise AssertionError(f"unknown parameter kind {k}")


def is_concrete(e: sympy.Basic) -> bool:
    return not sympy.sympify(e).free_symbols
