"""AST of a ``.seq`` file: frozen dataclasses, each carrying its source position.

Positions take no part in equality, so that parse -> print -> parse compares equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seqdsl.errors import NOWHERE, Pos


def _pos() -> Pos:
    return field(default=NOWHERE, compare=False, repr=False)  # type: ignore[return-value]


# ---- expressions ------------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    id: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class Number:
    text: str  # as written; the value is exact (int or rational) in the checker
    pos: Pos = _pos()

    @property
    def is_int(self) -> bool:
        return self.text.isdigit()


@dataclass(frozen=True)
class String:
    value: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class Bool:
    value: bool
    pos: Pos = _pos()


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: Expr
    pos: Pos = _pos()


@dataclass(frozen=True)
class Call:
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Slice:
    lo: Expr | None
    hi: Expr | None
    pos: Pos = _pos()


@dataclass(frozen=True)
class EllipsisIndex:
    pos: Pos = _pos()


@dataclass(frozen=True)
class NewAxis:
    pos: Pos = _pos()


@dataclass(frozen=True)
class Index:
    base: Expr
    subs: tuple[Expr | Slice | EllipsisIndex | NewAxis, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Attr:
    base: Expr
    name: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / // % @ ** & | == != < <= > >= in and or
    left: Expr
    right: Expr
    pos: Pos = _pos()


@dataclass(frozen=True)
class UnaryOp:
    op: str  # - not ~
    operand: Expr
    pos: Pos = _pos()


@dataclass(frozen=True)
class Cond:
    test: Expr
    then: Expr
    orelse: Expr
    pos: Pos = _pos()


Expr = Name | Number | String | Bool | ListExpr | Call | Index | Attr | BinOp | UnaryOp | Cond

# ---- statements -------------------------------------------------------------------


@dataclass(frozen=True)
class TypeExpr:
    dtype: str  # "float" unless written
    dims: tuple[Expr, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Assign:
    targets: tuple[str, ...]
    value: Expr
    pos: Pos = _pos()


@dataclass(frozen=True)
class Return:
    values: tuple[Expr, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Repeat:
    count: Expr
    var: str | None
    shared: bool
    body: tuple[Stmt, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class If:
    test: Expr
    body: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class ParamStmt:
    name: str
    type: TypeExpr
    init: Expr | None
    pos: Pos = _pos()


@dataclass(frozen=True)
class Require:
    test: Expr
    message: str | None
    pos: Pos = _pos()


Stmt = Assign | Return | Repeat | If | ParamStmt | Require

# ---- top level --------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    path: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class DimItem:
    name: str
    value: Expr | None
    pos: Pos = _pos()


@dataclass(frozen=True)
class DimDecl:
    items: tuple[DimItem, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class OptionDecl:
    items: tuple[DimItem, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class TensorParam:
    name: str
    type: TypeExpr
    pos: Pos = _pos()


@dataclass(frozen=True)
class ConfigParam:
    name: str
    default: Expr
    pos: Pos = _pos()


Param = TensorParam | ConfigParam


@dataclass(frozen=True)
class Definition:
    kind: str  # mixer | block | model
    name: str
    params: tuple[Param, ...]
    returns: tuple[TypeExpr, ...] | None
    body: tuple[Stmt, ...]
    pos: Pos = _pos()


Item = Import | DimDecl | OptionDecl | Require | Definition


@dataclass(frozen=True)
class Module:
    file: str = field(compare=False)
    items: tuple[Item, ...]
    pos: Pos = _pos()
