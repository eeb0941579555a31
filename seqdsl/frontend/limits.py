"""The limits that keep an untrusted ``.seq`` file from hanging or exhausting the compiler.

A few bytes must not buy unbounded work: every quantity below is checked where it arises
and reported as a positioned :class:`SeqError` (docs/language.md, "Limits"). They are far
above what any real architecture needs.
"""

from __future__ import annotations

import math
import re

import sympy
from sympy.core.evalf import PrecisionExhausted

from seqdsl.errors import Pos, SeqError

MAX_FILE_BYTES = 256 << 10        # a .seq file (main or imported): the parser reads ~100 KB/s
MAX_NESTING = 100                 # depth of the syntax tree: nested expressions and blocks
MAX_IMPORT_DEPTH = 64             # a imports b imports c ...
MAX_CALL_DEPTH = 64               # a definition calling a definition calling ...
MAX_STATEMENTS = 20_000           # statements checked in all, repeats unrolled and calls inlined
MAX_NODES = 16_384                # layers and operations made (the largest example makes ~4000)
MAX_LITERAL_DIGITS = 64           # digits of a number as written
MAX_EXPONENT = 300                # |e| in 1.5e-7
MAX_BITS = 1000                   # numerator and denominator of an exact number (about 1e301)
MAX_POWER = 64                    # |b| in a ** b with a a size (sympy expands (N + 1) ** b)
MAX_SIZE = 1 << 53                # a concrete dimension (9e15: exact as a float)
MAX_EXPR_OPS = 300                # nodes of one symbolic size expression

_LITERAL = re.compile(r"(?P<mant>\d+\.\d*|\.\d+|\d+)(?:[eE](?P<exp>[-+]?\d+))?")


def literal(text: str, pos: Pos) -> sympy.Rational:
    """The exact value of a number as written (``1e-3``, ``0.5``, ``4096``), refusing the
    ones too long or too large to be sizes or scales before converting them."""
    m = _LITERAL.fullmatch(text.strip())
    if m is None:
        raise SeqError(f"{text.strip()[:40]!r} is not a number", pos)
    mant, exp = m.group("mant"), m.group("exp")
    digits = sum(c.isdigit() for c in mant)
    if digits > MAX_LITERAL_DIGITS:
        raise SeqError(f"number has {digits} digits (at most {MAX_LITERAL_DIGITS})", pos)
    if exp is not None and (len(exp.lstrip("+-").lstrip("0")) > 4 or abs(int(exp)) > MAX_EXPONENT):
        raise SeqError(f"number exponent out of range: {'e' + exp if len(exp) < 20 else 'e' + exp[:20] + '...'}"
                       f" (at most e±{MAX_EXPONENT})", pos)
    value = sympy.Integer(int(mant)) if exp is None and mant.isdigit() else sympy.Rational(m.group(0))
    return in_range(value, pos)


def in_range(value: sympy.Basic, pos: Pos) -> sympy.Basic:
    """``value`` if it is a real number of sane size (or symbolic); else a SeqError."""
    if not isinstance(value, sympy.Basic) or value.free_symbols:
        return value
    if value.has(sympy.I, sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) or value.is_real is False:
        raise SeqError(f"the result is not a real number ({_short(value)})", pos)
    if value.is_Rational:
        if max(abs(value.p).bit_length(), abs(value.q).bit_length()) > MAX_BITS:
            raise SeqError(f"number out of range (more than {MAX_BITS} bits)", pos)
        return value
    if value.is_number:
        try:
            approx = value.evalf(15)
        except PrecisionExhausted:     # floor(pi / 1e-300): the integer part needs 300 digits
            raise SeqError(f"number out of range: {_short(value)} cannot be computed exactly", pos) from None
        if approx.is_real is False or approx.has(sympy.I):
            raise SeqError(f"the result is not a real number ({_short(value)})", pos)
        if approx.is_Float and approx != 0 and not (-MAX_BITS < math.log2(abs(float(approx)) or 1e-308) < MAX_BITS):
            raise SeqError("number out of range", pos)
    return value


def check_power(a: sympy.Basic, b: sympy.Basic, pos: Pos) -> None:
    """Refuse ``a ** b`` before sympy computes it, when the result would be too large."""
    if b.free_symbols:
        raise SeqError("an exponent must be a number, not a size", pos,
                       hint="sizes grow exponentially in it; write the power out or use a dim")
    if not b.is_Rational:
        return
    if a.free_symbols:
        if abs(b) > MAX_POWER:
            raise SeqError(f"exponent {_short(b)} is too large (at most {MAX_POWER} on a size)", pos)
        return
    if a.is_Rational and a not in (0, 1, -1):
        bits = max(abs(a.p).bit_length(), abs(a.q).bit_length()) * abs(b)
    elif a.is_number and not a.is_Rational:     # sqrt(2) ** 1e300 is 2 ** 5e299 to sympy
        size = abs(float(a.evalf(15)))
        bits = abs(b) * abs(math.log2(size)) if size > 0 else 0
        if abs(b) > MAX_POWER and size not in (0.0, 1.0):
            bits = max(bits, MAX_BITS + 65)
    else:
        return
    if bits > MAX_BITS + 64:
        raise SeqError(f"number out of range: {_short(a)} ** {_short(b)} has more than {MAX_BITS} bits", pos)


def check_size(expr: sympy.Basic, pos: Pos, what: str = "size expression",
               subs: dict | None = None) -> sympy.Basic:
    """``expr`` if its tree is small enough to compute with (sympy's work grows with it), its
    powers of sizes are at most MAX_POWER (``(N ** 1000) ** 1000`` is N ** 1000000 to sympy)
    and, at the sizes in ``subs``, its value is in range (``N ** 1000 * M ** 1000``)."""
    if not isinstance(expr, sympy.Basic) or not expr.free_symbols:
        return expr
    if _ops(expr) > MAX_EXPR_OPS:
        raise SeqError(f"{what} too large (more than {MAX_EXPR_OPS} nodes)", pos,
                       hint="a shape that grows with every repetition; give the sizes values (--set)")
    for p in expr.atoms(sympy.Pow):
        if p.exp.is_number and abs(p.exp) > MAX_POWER:
            raise SeqError(f"exponent {_short(p.exp)} is too large (at most {MAX_POWER} on a size)", pos)
    if subs:
        value = expr.xreplace(subs)
        if value.is_number:
            in_range(value, pos)
    return expr


def _ops(expr: sympy.Basic) -> int:
    """Nodes of ``expr``'s tree, stopping early past the limit (the tree may be exponential)."""
    count, stack = 0, [expr]
    while stack:
        e = stack.pop()
        count += 1
        if count > MAX_EXPR_OPS:
            return count
        stack.extend(e.args)
    return count


def _short(value: sympy.Basic) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
