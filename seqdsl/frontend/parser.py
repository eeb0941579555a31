"""lark parse tree -> AST. The grammar is loaded once and cached.

Each grammar rule has exactly one handler below, named after the rule (or its alias);
handlers receive their children by name (``v_args(inline=True)``), never by index.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from seqdsl.errors import Pos, SeqError, register_source
from seqdsl.frontend import ast as A
from seqdsl.frontend.limits import MAX_FILE_BYTES, MAX_NESTING, literal

GRAMMAR_FILE = "seq.lark"

# Friendly names for the terminals that lark reports as "expected".
_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "'('",
    "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "DEF_KIND": "'mixer', 'block' or 'model'",
    "SEMICOLON": "';'", "$END": "end of file", "DTYPE": "a dtype", "MINUS": "'-'",
    "RETURN": "'return'", "IF": "'if'", "REPEAT": "'repeat'", "PARAM": "'param'",
    "REQUIRE": "'require'", "DIM": "'dim'", "OPTION": "'option'", "IMPORT": "'import'",
    "ELSE": "'else'", "THEN": "'then'", "TRUE": "'true'", "FALSE": "'false'", "TILDE": "'~'",
    "DOT": "'.'", "MUL_OP": "an operator", "ADD_OP": "'+' or '-'", "COMP_OP": "a comparison",
}


def grammar_text() -> str:
    """The grammar, from the installed package or from the source checkout."""
    packaged = resources.files("seqdsl").joinpath("grammar", GRAMMAR_FILE)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[2] / "grammar" / GRAMMAR_FILE
    return checkout.read_text(encoding="utf-8")


# Words that can never be names (docs/language.md), and the terminal each one lexes as.
# The contextual lexer reads such a word as a NAME wherever its keyword cannot follow
# (`dim return = 3`); _reserved turns it back into its keyword, so that the parser
# reports it. `mixer block model int float bool as shared` are keywords only in context.
_RESERVED = {
    "dim": "DIM", "option": "OPTION", "require": "REQUIRE", "import": "IMPORT",
    "return": "RETURN", "repeat": "REPEAT", "if": "IF", "then": "THEN", "else": "ELSE",
    "param": "PARAM", "and": "AND", "or": "OR", "not": "NOT", "in": "COMP_OP",
    "true": "TRUE", "false": "FALSE", "None": "NONE",
}


def _reserved(tok: Token) -> Token:
    kind = _RESERVED.get(str(tok))
    return tok if kind is None else tok.update(type=kind)


@functools.cache
def _lark() -> lark.Lark:
    return lark.Lark(
        grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True,
        lexer_callbacks={"NAME": _reserved},
    )


def grammar_rules() -> set[str]:
    """Every rule name and alias of the grammar (used by the rule-coverage test)."""
    names = set()
    for rule in _lark().rules:
        names.add(rule.alias or rule.origin.name)
    return {str(n) for n in names}


def _strip(tok: Token | None) -> str | None:
    return None if tok is None else str(tok)


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(tok: Token) -> str:
    """The value of a string literal; its escapes are read left to right, in one pass."""
    return re.sub(r'\\(["\\nt])', lambda m: _ESCAPES[m.group(1)], str(tok)[1:-1])


@v_args(inline=True, meta=True)
class _ToAst(Transformer):
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _p(self, meta) -> Pos:
        if getattr(meta, "empty", True):
            return Pos(self.file, 0, 0)
        return Pos(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    # ---- top level
    def start(self, meta, *items):
        return A.Module(self.file, tuple(i for i in items if i is not None), self._p(meta))

    def empty_item(self, meta):
        return None

    def import_decl(self, meta, path):
        return A.Import(_unquote(path), self._p(meta))

    def dim_decl(self, meta, *items):
        return A.DimDecl(tuple(items), self._p(meta))

    def dim_item(self, meta, name, value):
        return A.DimItem(str(name), value, self._p(meta))

    def option_decl(self, meta, *items):
        return A.OptionDecl(tuple(items), self._p(meta))

    def option_item(self, meta, name, value):
        return A.DimItem(str(name), value, self._p(meta))

    def require_decl(self, meta, test, message):
        return A.Require(test, None if message is None else _unquote(message), self._p(meta))

    def definition(self, meta, kind, name, params, ret, body):
        return A.Definition(str(kind), str(name), params or (), ret, body, self._p(meta))

    def params(self, meta, *ps):
        return tuple(ps)

    def tensor_param(self, meta, name, type_):
        return A.TensorParam(str(name), type_, self._p(meta))

    def config_param(self, meta, name, default):
        return A.ConfigParam(str(name), default, self._p(meta))

    def ret_type(self, meta, types):
        return types

    def type_list(self, meta, *types):
        return tuple(types)

    def type_expr(self, meta, dtype, dims):
        return A.TypeExpr(_strip(dtype) or "float", dims or (), self._p(meta))

    def shape_dims(self, meta, *dims):
        return tuple(dims)

    def body(self, meta, *stmts):
        return tuple(s for s in stmts if s is not None)

    # ---- statements
    def empty_stmt(self, meta):
        return None

    def assign(self, meta, targets, value):
        return A.Assign(targets, value, self._p(meta))

    def targets(self, meta, *names):
        return tuple(str(n) for n in names)

    def return_stmt(self, meta, *values):
        return A.Return(tuple(values), self._p(meta))

    def repeat_stmt(self, meta, count, var, shared, body):
        return A.Repeat(count, var, shared is not None, body, self._p(meta))

    def repeat_name(self, meta, name):
        return str(name)

    def if_stmt(self, meta, test, body, orelse):
        return A.If(test, body, orelse or (), self._p(meta))

    def else_body(self, meta, body):
        return body

    def else_if(self, meta, stmt):
        return (stmt,)

    def param_stmt(self, meta, name, type_, init):
        return A.ParamStmt(str(name), type_, init, self._p(meta))

    # ---- expressions
    def cond_expr(self, meta, test, then, orelse):
        return A.Cond(test, then, orelse, self._p(meta))

    def or_op(self, meta, left, right):
        return A.BinOp("or", left, right, self._p(meta))

    def and_op(self, meta, left, right):
        return A.BinOp("and", left, right, self._p(meta))

    def not_op(self, meta, operand):
        return A.UnaryOp("not", operand, self._p(meta))

    def compare(self, meta, left, op, right):
        return A.BinOp(str(op), left, right, self._p(meta))

    def union_op(self, meta, left, right):
        return A.BinOp("|", left, right, self._p(meta))

    def intersect_op(self, meta, left, right):
        return A.BinOp("&", left, right, self._p(meta))

    def binop(self, meta, left, op, right):
        return A.BinOp(str(op), left, right, self._p(meta))

    def neg(self, meta, operand):
        return A.UnaryOp("-", operand, self._p(meta))

    def complement(self, meta, operand):
        return A.UnaryOp("~", operand, self._p(meta))

    def pow_op(self, meta, left, right):
        return A.BinOp("**", left, right, self._p(meta))

    def call(self, meta, func, args):
        positional, keywords = [], []
        for a in args or ():
            (keywords if isinstance(a, A.Kwarg) else positional).append(a)
        return A.Call(func, tuple(positional), tuple(keywords), self._p(meta))

    def args(self, meta, *items):
        seen_kw = False
        for item in items:
            if isinstance(item, A.Kwarg):
                seen_kw = True
            elif seen_kw:
                raise SeqError("positional argument after a keyword argument", item.pos)
        return tuple(items)

    def kwarg(self, meta, name, value):
        return A.Kwarg(str(name), value, self._p(meta))

    def index(self, meta, base, subs):
        return A.Index(base, subs, self._p(meta))

    def subscripts(self, meta, *subs):
        return tuple(subs)

    def slice(self, meta, lo, hi):
        return A.Slice(lo, hi, self._p(meta))

    def ellipsis(self, meta):
        return A.EllipsisIndex(self._p(meta))

    def newaxis(self, meta):
        return A.NewAxis(self._p(meta))

    def attr(self, meta, base, name):
        return A.Attr(base, str(name), self._p(meta))

    def name(self, meta, tok):
        return A.Name(str(tok), self._p(meta))

    def number(self, meta, tok):
        literal(str(tok), self._p(meta))      # refuses 1e1000000000 before anything computes it
        return A.Number(str(tok), self._p(meta))

    def string(self, meta, tok):
        return A.String(_unquote(tok), self._p(meta))

    def true(self, meta):
        return A.Bool(True, self._p(meta))

    def false(self, meta):
        return A.Bool(False, self._p(meta))

    def list_expr(self, meta, items):
        return A.ListExpr(items or (), self._p(meta))

    def expr_list(self, meta, *items):
        return tuple(items)


def _missing_closer(expected) -> str | None:
    """'is a '}' missing?' where a closing brace or parenthesis could come next."""
    closers = [c for t, c in (("RBRACE", "'}'"), ("RPAR", "')'")) if t in expected]
    return f"is a {' or '.join(closers)} missing?" if closers else None


def _syntax_error(err: lark.exceptions.UnexpectedInput, file: str, text: str) -> SeqError:
    line, col = err.line, err.column
    pos = Pos(file, line, col)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        ch = err.char
        if ch == '"':
            return SeqError("unterminated string", pos, hint='a string ends with " on the same line')
        return SeqError(f"unexpected character {ch!r}", pos)
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        return SeqError("unexpected end of file", pos, hint=_missing_closer(err.expected))
    tok = err.token
    expected = sorted({_TOKEN_NAMES.get(t, repr(t)) for t in err.expected})
    if tok.type == "$END":
        what = "end of file"
        lines = text.removesuffix("\n").split("\n")    # lines as the lexer counts them
        pos = Pos(file, len(lines) + (1 if text.endswith("\n") else 0),
                  1 if text.endswith("\n") else len(lines[-1]) + 1)
    else:
        what = f"{str(tok)!r}"
        pos = Pos(file, tok.line, tok.column, tok.end_line, tok.end_column)
    hint = None
    if len(expected) <= 6:
        hint = "expected " + ", ".join(expected)
    if tok.type == "$END":
        hint = _missing_closer(err.expected) or hint
    if set(err.expected) == {"COMMA", "EQUAL"}:
        hint = "a statement that starts with a name assigns to it: name = ..."
    if "RPAR" in err.expected and tok.type in ("RBRACE", "$END", "NAME", "RETURN"):
        hint = "is a ')' missing?"
    if tok.type == "EQUAL" and "'='" not in expected:
        hint = "'=' here is not allowed; use '==' to compare"
        before = re.search(r"(\w+)\s*$", text.split("\n")[tok.line - 1][: tok.column - 1])
        if before and before.group(1) in _KEYWORDS:
            hint = f"{before.group(1)!r} is a keyword and cannot be used as a name"
    # a keyword where a name could stand (after a ')' that is missing, a keyword is just
    # the start of the next statement: the hint above stays)
    if "NAME" in err.expected and (tok.type in ("DEF_KIND", "DTYPE", "SHARED", "COMP_OP")
                                   or str(tok) in _KEYWORDS):
        hint = f"{str(tok)!r} is a keyword and cannot be used as a name here"
    return SeqError(f"syntax error: unexpected {what}", pos, hint=hint)


_KEYWORDS = {
    "mixer", "block", "model", "dim", "option", "require", "import", "return", "repeat",
    "as", "shared", "if", "then", "else", "param", "and", "or", "not", "in", "true",
    "false", "int", "float", "bool", "None",
}


def _check_nesting(tree: lark.Tree, file: str) -> None:
    """Refuse a tree deeper than MAX_NESTING before anything walks it recursively (the
    transformer, the checker, sympy): 1000 nested minus signs are a few bytes."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            pos = Pos(file, meta.line, meta.column) if not getattr(meta, "empty", True) else Pos(file, 0, 0)
            raise SeqError(f"nesting too deep: more than {MAX_NESTING} levels of expressions and blocks", pos,
                           hint="split the expression or the block into named steps")
        # leftmost first: in a long sum the error points where the sum starts
        stack.extend(reversed([(c, depth + 1) for c in node.children if isinstance(c, lark.Tree)]))


def parse_text(text: str, file: str = "<string>") -> A.Module:
    """Parse the text of a ``.seq`` file into an AST :class:`Module`."""
    text = text.removeprefix("\ufeff")      # a UTF-8 byte-order mark, as some editors write
    register_source(file, text)
    if len(text) > MAX_FILE_BYTES:
        raise SeqError(f"file too large: {len(text)} characters (at most {MAX_FILE_BYTES})", Pos(file, 0, 0))
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, file, text) from None
    _check_nesting(tree, file)
    try:
        return _ToAst(file).transform(tree)
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, SeqError):
            raise err.orig_exc from None
        raise


def read_source(path: str | Path) -> str:
    """The text of a ``.seq`` file: a regular file of at most MAX_FILE_BYTES, in UTF-8.
    A device, a FIFO or a directory is refused without reading from it (opened without
    blocking, then checked)."""
    path = Path(path)
    where = Pos(str(path), 0, 0)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise SeqError(f"cannot read {path}: {err.strerror}", where) from None
    except ValueError:      # a NUL in the name
        raise SeqError(f"cannot read {path}: not a valid file name", where) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SeqError(f"cannot read {path}: {what}", where)
        if info.st_size > MAX_FILE_BYTES:
            raise SeqError(f"cannot read {path}: file too large ({info.st_size} bytes, at most {MAX_FILE_BYTES})",
                           where)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise SeqError(f"cannot read {path}: {err.strerror}", where) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise SeqError(f"cannot read {path}: file too large (more than {MAX_FILE_BYTES} bytes)", where)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SeqError(f"{path} is not UTF-8 text", where) from None


def parse_file(path: str | Path) -> A.Module:
    return parse_text(read_source(path), str(path))
