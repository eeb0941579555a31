"""A parsed program: its files (imports resolved), dimensions, options and definitions.

``Program`` is what :func:`seqdsl.parse` returns. It holds the symbol tables; the checker
(:mod:`seqdsl.check.elaborate`) turns one entry of it into a layer graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sympy

from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import ast as A
from seqdsl.frontend.parser import parse_file, parse_text
from seqdsl.ir.types import dim_symbol, option_symbol


@dataclass
class DimInfo:
    name: str
    symbol: sympy.Symbol
    pos: Pos
    is_option: bool = False
    default: sympy.Basic | None = None     # a concrete value
    derived: sympy.Basic | None = None     # an expression of other dims (Dh = D / H)


@dataclass
class Program:
    """The checked symbol tables of a ``.seq`` file and everything it imports."""

    main: A.Module
    modules: list[A.Module] = field(default_factory=list)
    dims: dict[str, DimInfo] = field(default_factory=dict)
    definitions: dict[str, A.Definition] = field(default_factory=dict)
    requires: list[A.Require] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.main.file

    @property
    def entry_name(self) -> str:
        """The file's model; else its last definition (mixer files)."""
        own = [i for i in self.main.items if isinstance(i, A.Definition)]
        models = [d for d in own if d.kind == "model"]
        if models:
            return models[-1].name
        if own:
            return own[-1].name
        if self.definitions:
            return list(self.definitions)[-1]
        raise SeqError("the file defines no mixer, block or model", Pos(self.file, 1, 1))

    def sizes(self, overrides: dict[str, object] | None = None) -> dict[str, sympy.Basic]:
        """Concrete values of dims and options: defaults, then the overrides."""
        values: dict[str, sympy.Basic] = {}
        for info in self.dims.values():
            if info.default is not None:
                values[info.name] = info.default
        for name, raw in (overrides or {}).items():
            info = self.dims.get(name)
            if info is None:
                known = ", ".join(sorted(self.dims)) or "none"
                raise SeqError(f"unknown size or option {name!r} (declared: {known})", Pos(self.file, 0, 0))
            if info.derived is not None:
                raise SeqError(
                    f"{name} is derived ({name} = {info.derived}); set the dims it is made of instead",
                    info.pos)
            value = _coerce_size(raw, info)
            values[name] = value
        return values


def _coerce_size(raw: object, info: DimInfo) -> sympy.Basic:
    try:
        if isinstance(raw, bool):
            value = sympy.Integer(int(raw))
        elif isinstance(raw, str):
            low = raw.strip().lower()
            value = sympy.Integer(1 if low == "true" else 0) if low in ("true", "false") else sympy.Rational(raw)
        else:
            value = sympy.Rational(str(raw)) if isinstance(raw, float) else sympy.Integer(raw)
    except (TypeError, ValueError, sympy.SympifyError):
        raise SeqError(f"{info.name} must be a number, got {raw!r}", info.pos) from None
    if not info.is_option and (not value.is_integer or value <= 0):
        raise SeqError(f"dim {info.name} must be a positive integer, got {raw}", info.pos)
    return value


def load_program(source: str | Path) -> Program:
    """Parse a path or the text itself, resolve imports and declarations."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith(".seq")):
        main = parse_file(source)
    else:
        main = parse_text(str(source), "<string>")
    prog = Program(main)
    _collect(prog, main, stack=[])
    return prog


def _collect(prog: Program, module: A.Module, stack: list[str]) -> None:
    here = Path(module.file).resolve() if module.file != "<string>" else Path.cwd() / "<string>"
    stack = stack + [str(here)]
    for item in module.items:
        if isinstance(item, A.Import):
            target = (here.parent / item.path).resolve()
            if str(target) in stack:
                chain = " -> ".join(Path(p).name for p in stack[stack.index(str(target)):] + [str(target)])
                raise SeqError(f"import cycle: {chain}", item.pos)
            if any(Path(m.file).resolve() == target for m in prog.modules):
                continue
            if not target.is_file():
                raise SeqError(f"cannot import {item.path!r}: no such file ({target})", item.pos)
            sub = parse_file(target)
            _collect(prog, sub, stack)
    prog.modules.append(module)
    for item in module.items:
        if isinstance(item, (A.DimDecl, A.OptionDecl)):
            for d in item.items:
                _declare(prog, d, is_option=isinstance(item, A.OptionDecl), imported=module is not prog.main)
        elif isinstance(item, A.Definition):
            prev = prog.definitions.get(item.name)
            if prev is not None and prev.pos.file == item.pos.file:
                raise SeqError(f"{item.name!r} is defined twice (first at {prev.pos})", item.pos)
            _check_params(item)
            prog.definitions[item.name] = item
        elif isinstance(item, A.Require):
            prog.requires.append(item)


def _check_params(d: A.Definition) -> None:
    seen: dict[str, A.Param] = {}
    for p in d.params:
        first = seen.setdefault(p.name, p)
        if first is not p:
            raise SeqError(f"{d.name}: parameter {p.name!r} is named twice (first at {first.pos})", p.pos)


def _declare(prog: Program, d: A.DimItem, is_option: bool, imported: bool) -> None:
    from seqdsl.check.scalars import eval_decl

    prev = prog.dims.get(d.name)
    if prev is not None and prev.pos.file == d.pos.file:
        raise SeqError(f"{d.name!r} is declared twice (first at {prev.pos})", d.pos)
    if prev is not None and prev.is_option != is_option:
        kind = "option" if prev.is_option else "dim"
        raise SeqError(f"{d.name!r} was declared as an {kind} in {prev.pos.file}", d.pos)
    symbol = option_symbol(d.name) if is_option else dim_symbol(d.name)
    info = DimInfo(d.name, symbol, d.pos, is_option=is_option)
    if d.value is not None:
        value = eval_decl(d.value, prog.dims, d.name)
        if value.free_symbols:
            if is_option:
                raise SeqError(f"option {d.name} needs a constant default", d.value.pos)
            info.derived = value
        else:
            if not is_option and (not value.is_integer or not value.is_positive):
                raise SeqError(f"dim {d.name} must be a positive integer, got {value}", d.value.pos)
            info.default = value
    elif is_option:
        raise SeqError(f"option {d.name} needs a default value", d.pos)
    prog.dims[d.name] = info
