"""Exact scalar arithmetic on sympy expressions, shared by declarations and the checker."""

from __future__ import annotations

import sympy

from seqdsl.errors import SeqError
from seqdsl.frontend import ast as A
from seqdsl.frontend.limits import check_power, check_size, in_range, literal


def number(node: A.Number) -> sympy.Basic:
    """The exact value of a numeric literal (0.1 is 1/10, not a float)."""
    return literal(node.text, node.pos)


def as_number(e: sympy.Basic) -> sympy.Basic:
    """A boolean as the number it stands for (true is 1, false is 0), as in option
    declarations; anything else as it is."""
    if e is sympy.true:
        return sympy.Integer(1)
    if e is sympy.false:
        return sympy.Integer(0)
    return e


def arith(op: str, a: sympy.Basic, b: sympy.Basic, pos, subs: dict | None = None) -> sympy.Basic:
    """Scalar ``a op b``; exact, symbolic where the operands are. A result that is not a
    real number, too large a number or too large an expression (also at the sizes ``subs``,
    where they are known) is an error here, where the program wrote it (frontend/limits.py)."""
    a, b = as_number(a), as_number(b)
    if op == "**":
        check_power(a, b, pos)
    return check_size(in_range(_arith(op, a, b, pos), pos), pos, subs=subs)


def _arith(op: str, a: sympy.Basic, b: sympy.Basic, pos) -> sympy.Basic:
    if op in ("/", "//", "%") and b == 0:
        raise SeqError("division by zero", pos)
    match op:
        case "+":
            return a + b
        case "-":
            return a - b
        case "*":
            return a * b
        case "/":
            return a / b
        case "//":
            return sympy.floor(_quotient(a, b, pos))
        case "%":
            _quotient(a, b, pos)
            return sympy.Mod(a, b)
        case "**":
            if a == 0 and b.is_negative:
                raise SeqError("zero to a negative power", pos)
            return a ** b
    raise SeqError(f"operator {op!r} does not apply to numbers", pos)


MAX_IRRATIONAL_QUOTIENT = 2 ** 53


def _quotient(a: sympy.Basic, b: sympy.Basic, pos) -> sympy.Basic:
    """``a / b`` for ``//`` and ``%``. Its integer part must be exact: for an irrational
    quotient (``pi``, a root) beyond 2**53 it would take hundreds of digits of the constant
    to find, and sympy cannot always decide it (``1e300 % pi``); refused as out of range."""
    q = a / b
    if q.is_number and not q.is_Rational:
        size = abs(complex(q.evalf(15)))
        if size >= MAX_IRRATIONAL_QUOTIENT:
            raise SeqError(f"number out of range: the integer part of an irrational quotient of about {size:.3g} "
                           f"(at most 2**53 for // and %)", pos)
    return q


def eval_decl(expr: A.Expr, dims: dict, what: str) -> sympy.Basic:
    """A declaration's value: numbers and earlier dims, with + - * / // % **."""
    match expr:
        case A.Number():
            return number(expr)
        case A.Bool(value=v):
            return sympy.Integer(int(v))
        case A.Name(id=name):
            info = dims.get(name)
            if info is None:
                raise SeqError(f"unknown name {name!r} in the declaration of {what}", expr.pos,
                               hint="declare dims before using them")
            return info.derived if info.derived is not None else info.symbol
        case A.UnaryOp(op="-", operand=o):
            return -eval_decl(o, dims, what)
        case A.BinOp(op=op, left=l, right=r) if op in ("+", "-", "*", "/", "//", "%", "**"):
            return arith(op, eval_decl(l, dims, what), eval_decl(r, dims, what), expr.pos)
    raise SeqError(f"the value of {what} must be an arithmetic expression of numbers and dims",
                   expr.pos)
