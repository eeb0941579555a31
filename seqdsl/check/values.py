"""What an expression of a ``.seq`` file evaluates to while the checker elaborates it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from seqdsl.errors import Pos
from seqdsl.ir.graph import Port
from seqdsl.ir.types import TensorType


@dataclass(frozen=True)
class Tensor:
    port: Port
    type: TensorType

    kind_name = "a tensor"


@dataclass(frozen=True)
class Scalar:
    """A number, a dimension, an option or an expression of them (exact, symbolic)."""

    expr: sympy.Basic

    kind_name = "a number"

    def __post_init__(self) -> None:
        # A boolean is the number it stands for (true is 1), as in option declarations:
        # `x[: true]`, `k = 1 // (not 0)` or `-false` then compute instead of failing in sympy.
        if self.expr is sympy.true or self.expr is sympy.false:
            object.__setattr__(self, "expr", sympy.Integer(int(self.expr is sympy.true)))


@dataclass(frozen=True)
class Str:
    value: str

    kind_name = "a string"


@dataclass(frozen=True)
class Word:
    """A bare name bound to nothing: valid only where a choice is expected (norm = softmax)."""

    name: str
    pos: Pos

    kind_name = "a bare name"


@dataclass(frozen=True)
class ListV:
    items: tuple[Any, ...]

    kind_name = "a list"


@dataclass(frozen=True)
class TupleV:
    items: tuple[Any, ...]

    kind_name = "several values"


@dataclass(frozen=True)
class Func:
    """A user definition or a builtin, used as a value (expert=ffn, act=gelu)."""

    name: str
    definition: Any = None  # frontend.ast.Definition for user definitions

    kind_name = "a function"


@dataclass(frozen=True)
class Struct:
    """A part of the mixing template (mask, score, feature map, kernel, bias, init) with the
    tensors it refers to, keyed by the role they will have as inputs of the MIX node."""

    what: str                       # mask | score | feature | kernel | bias | init
    obj: Any                        # an seqdsl.ir.mix object (with Refs) or an Init
    tensors: tuple[tuple[str, Tensor], ...] = ()
    pending: tuple[Any, ...] = field(default=())  # kernel params created when the mix is known

    @property
    def kind_name(self) -> str:
        return f"a {self.what}"


@dataclass(frozen=True)
class Init:
    """How a parameter starts: normal(std), uniform(lo, hi), zeros, ones, constant(c);
    ``trainable=false`` makes it a fixed buffer."""

    kind: str
    args: tuple[sympy.Basic, ...] = ()
    trainable: bool = True

    def __str__(self) -> str:
        a = ", ".join(str(x) for x in self.args)
        return f"{self.kind}({a})" + ("" if self.trainable else " frozen")


Value = Tensor | Scalar | Str | Word | ListV | TupleV | Func | Struct


def describe(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    return getattr(v, "kind_name", type(v).__name__)
