"""Tensor types of the IR: a dtype and a shape whose entries are sympy expressions."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

DTYPES = ("float", "int", "bool")


def dim_symbol(name: str) -> sympy.Symbol:
    """A sequence length, width or count: a positive integer symbol."""
    return sympy.Symbol(name, positive=True, integer=True)


def option_symbol(name: str) -> sympy.Symbol:
    """A hyper-parameter: a real number (window sizes, rates, flags)."""
    return sympy.Symbol(name, real=True)


def show_dim(d: sympy.Expr) -> str:
    return str(d).replace("**", "^") if not isinstance(d, sympy.Integer) else str(int(d))


@dataclass(frozen=True)
class TensorType:
    shape: tuple[sympy.Expr, ...]
    dtype: str = "float"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def numel(self) -> sympy.Expr:
        return sympy.Mul(*self.shape) if self.shape else sympy.Integer(1)

    def __str__(self) -> str:
        prefix = "" if self.dtype == "float" else self.dtype
        return prefix + "[" + ", ".join(show_dim(d) for d in self.shape) + "]"


SIMPLIFY_NODES = 40   # larger expressions are only expanded: simplify()'s time explodes with size


def simplified(expr: sympy.Expr) -> sympy.Expr:
    """``sympy.simplify(expr)`` for expressions small enough for it to finish quickly; a
    larger one (a shape that grew through a chain of concats) is only expanded, or left as
    it is where expanding would multiply out powers of sums: it may stay unsimplified, but
    this never hangs (issue 11)."""
    expr = sympy.sympify(expr)
    count, stack = 0, [expr]
    while stack and count <= SIMPLIFY_NODES:
        e = stack.pop()
        count += 1
        stack.extend(e.args)
    if count <= SIMPLIFY_NODES:
        return sympy.simplify(expr)
    if any(p.exp.is_number and abs(p.exp) > 2 and p.base.is_Add for p in expr.atoms(sympy.Pow)):
        return expr           # (N + 1) ** 64 would expand to 65 terms, and their products further
    return sympy.expand(expr)


def same_dim(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Provably equal for all values of the symbols (as far as simplified() can prove)."""
    if a == b:
        return True
    return simplified(a - b) == 0


def broadcast(a: tuple[sympy.Expr, ...], b: tuple[sympy.Expr, ...]) -> tuple[sympy.Expr, ...] | None:
    """NumPy broadcasting over symbolic shapes; None if the shapes do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else sympy.Integer(1)
        db = b[-i] if i <= len(b) else sympy.Integer(1)
        if same_dim(da, db) or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            return None
    return tuple(reversed(out))
