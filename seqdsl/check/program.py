"""A parsed program: its files (imports resolved), dimensions, options and definitions.

``Program`` is what :func:`seqdsl.parse` returns. It holds the symbol tables; the checker
(:mod:`seqdsl.check.elaborate`) turns one entry of it into a layer graph.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sympy

from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import ast as A
from seqdsl.frontend.limits import MAX_IMPORT_DEPTH, MAX_SIZE, in_range, literal
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
    """A value given by the caller (``--set N=4096``, ``check(..., N=4096)``), read with the
    limits of a literal in the file: ``1e1000000000`` is refused, not computed."""
    where = info.pos
    shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
    try:
        if isinstance(raw, bool):
            value = sympy.Integer(int(raw))
        elif isinstance(raw, sympy.Basic) and raw.is_number:
            value = in_range(raw, where)
        elif hasattr(raw, "__index__"):          # int, numpy integers
            value = in_range(sympy.Integer(operator.index(raw)), where)
        elif isinstance(raw, (str, float)) or hasattr(raw, "__float__"):
            raw = raw if isinstance(raw, str) else float(raw)
            text = (repr(raw) if isinstance(raw, float) else raw).strip()
            low = text.lower()
            negative = text.startswith("-")
            value = sympy.Integer(1 if low == "true" else 0) if low in ("true", "false") else \
                literal(text.removeprefix("-").removeprefix("+"), where)
            value = -value if negative else value
        else:
            raise TypeError
    except (TypeError, ValueError, SeqError) as err:
        why = f" ({err.message})" if isinstance(err, SeqError) and "not a number" not in err.message else ""
        raise SeqError(f"{info.name} must be a number, got {shown}{why}", where) from None
    if not info.is_option and (not value.is_integer or value <= 0):
        raise SeqError(f"dim {info.name} must be a positive integer, got {shown}", where)
    if not info.is_option and value > MAX_SIZE:
        raise SeqError(f"dim {info.name} = {shown} is too large (at most 2**53)", where)
    return value


_CLI_IMPORTS: tuple[tuple[Path, ...], bool] = ((), False)


def set_import_defaults(import_path, allow_any_import: bool) -> None:
    """What the command line's ``--import-path`` and ``--allow-any-import`` add to every
    parse of the command (each command sets them again)."""
    global _CLI_IMPORTS
    _CLI_IMPORTS = (tuple(Path(p) for p in import_path), bool(allow_any_import))


@dataclass(frozen=True)
class ImportRules:
    """Where ``import "x.seq"`` may look: the importing file's folder, then ``path`` (the
    caller's search path: ``import_path=``, ``--import-path``, SEQDSL_PATH). Only ``.seq``
    files inside one of these folders (symlinks resolved first), unless ``allow_any``."""

    path: tuple[Path, ...] = ()
    allow_any: bool = False

    @staticmethod
    def make(import_path: Iterable[str | Path] | None, allow_any_import: bool | None) -> ImportRules:
        dirs = [Path(p) for p in (import_path or ())] + list(_CLI_IMPORTS[0])
        dirs += [Path(p) for p in os.environ.get("SEQDSL_PATH", "").split(os.pathsep) if p]
        if allow_any_import is None:
            allow_any_import = _CLI_IMPORTS[1] or os.environ.get("SEQDSL_ALLOW_ANY_IMPORT", "") not in ("", "0")
        return ImportRules(tuple(dirs), bool(allow_any_import))


def load_program(source: str | Path, import_path: Iterable[str | Path] | None = None,
                 allow_any_import: bool | None = None) -> Program:
    """Parse a path or the text itself, resolve imports and declarations."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith(".seq")):
        main = parse_file(source)
    else:
        main = parse_text(str(source), "<string>")
    prog = Program(main)
    _collect(prog, main, stack=[], rules=ImportRules.make(import_path, allow_any_import))
    return prog


def _resolve_import(item: A.Import, here: Path, rules: ImportRules) -> Path:
    """The file ``import "..."`` names. Nothing of a file that is refused is read or quoted."""
    if not item.path.endswith(".seq"):
        raise SeqError(f"cannot import {item.path!r}: only .seq files can be imported", item.pos)
    bases = [here.parent] + list(rules.path)
    outside = Path(item.path).is_absolute() or ".." in Path(item.path).parts
    for base in bases:
        try:
            target = (base / item.path).resolve()
            if not rules.allow_any and not target.is_relative_to(base.resolve()):
                outside = outside or (base / item.path).is_symlink()     # a link out of the folder
                continue
            found = target.exists()
        except (OSError, ValueError, RuntimeError):    # a NUL in the name, a name too long, a link loop
            continue
        if target.suffix != ".seq":      # a .seq name that is a link to something else
            raise SeqError(f"cannot import {item.path!r}: it is a link to a file that is not .seq", item.pos)
        if found:
            return target
    searched = ", ".join(str(b) for b in bases)
    hint = ("imports resolve inside the importing file's folder and the search path "
            "(--import-path, SEQDSL_PATH); --allow-any-import lifts this") if outside else None
    raise SeqError(f"cannot import {item.path!r}: no such file in {searched}", item.pos, hint=hint)


def _collect(prog: Program, module: A.Module, stack: list[str], rules: ImportRules) -> None:
    here = Path(module.file).resolve() if module.file != "<string>" else Path.cwd() / "<string>"
    stack = stack + [str(here)]
    for item in module.items:
        if isinstance(item, A.Import):
            if len(stack) > MAX_IMPORT_DEPTH:
                raise SeqError(f"imports nested too deeply (more than {MAX_IMPORT_DEPTH} files)", item.pos)
            target = _resolve_import(item, here, rules)
            if str(target) in stack:
                chain = " -> ".join(Path(p).name for p in stack[stack.index(str(target)):] + [str(target)])
                raise SeqError(f"import cycle: {chain}", item.pos)
            if any(Path(m.file).resolve() == target for m in prog.modules):
                continue
            sub = parse_file(target)
            _collect(prog, sub, stack, rules)
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
            if not is_option and value > MAX_SIZE:
                raise SeqError(f"dim {d.name} = {value} is too large (at most 2**53)", d.value.pos)
            info.default = value
    elif is_option:
        raise SeqError(f"option {d.name} needs a default value", d.pos)
    prog.dims[d.name] = info
