"""AST -> canonical ``.seq`` source. parse(print(ast)) == ast (tests/frontend/test_roundtrip.py)."""

from __future__ import annotations

from seqdsl.frontend import ast as A

# Binding strength of each operator, as in grammar/seq.lark (higher binds tighter).
_PREC = {
    "cond": 1, "or": 2, "and": 3, "not": 4,
    "==": 5, "!=": 5, "<": 5, "<=": 5, ">": 5, ">=": 5, "in": 5,
    "|": 6, "&": 7, "+": 8, "-": 8, "*": 9, "/": 9, "//": 9, "%": 9, "@": 9,
    "neg": 10, "~": 10, "**": 11, "postfix": 12, "atom": 13,
}


def _prec(e: A.Expr) -> int:
    match e:
        case A.Cond():
            return _PREC["cond"]
        case A.BinOp(op=op):
            return _PREC[op]
        case A.UnaryOp(op="not"):
            return _PREC["not"]
        case A.UnaryOp():
            return _PREC["neg"]
        case A.Call() | A.Index() | A.Attr():
            return _PREC["postfix"]
        case A.Number(text=t) if t.startswith("-"):
            return _PREC["neg"]
    return _PREC["atom"]


def _wrap(e: A.Expr, min_prec: int) -> str:
    text = expr(e)
    return f"({text})" if _prec(e) < min_prec else text


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def expr(e: A.Expr) -> str:
    """Source text of one expression, with the fewest parentheses that keep its meaning."""
    match e:
        case A.Name(id=i):
            return i
        case A.Number(text=t):
            return t
        case A.String(value=v):
            return _quote(v)
        case A.Bool(value=v):
            return "true" if v else "false"
        case A.ListExpr(items=items):
            return "[" + ", ".join(expr(i) for i in items) + "]"
        case A.Call(func=f, args=args, kwargs=kwargs):
            parts = [expr(a) for a in args] + [f"{k.name} = {expr(k.value)}" for k in kwargs]
            return f"{_wrap(f, _PREC['postfix'])}({', '.join(parts)})"
        case A.Index(base=b, subs=subs):
            return f"{_wrap(b, _PREC['postfix'])}[{', '.join(_sub(s) for s in subs)}]"
        case A.Attr(base=b, name=n):
            base = _wrap(b, _PREC["postfix"])
            if base.isdigit():
                base = f"({base})"  # `2.T` would lex as the number `2.` followed by `T`
            return f"{base}.{n}"
        case A.UnaryOp(op="not", operand=o):
            return f"not {_wrap(o, _PREC['not'])}"
        case A.UnaryOp(op=op, operand=o):
            return f"{op}{_wrap(o, _PREC['neg'])}"
        case A.BinOp(op="**", left=l, right=r):
            # right-associative; the exponent is a factor (may be negated)
            return f"{_wrap(l, _PREC['postfix'])} ** {_wrap(r, _PREC['neg'])}"
        case A.BinOp(op=op, left=l, right=r):
            p = _PREC[op]
            # comparisons do not chain: both sides bind tighter
            right_min = p + 1
            left_min = p + 1 if p == 5 else p
            return f"{_wrap(l, left_min)} {op} {_wrap(r, right_min)}"
        case A.Cond(test=t, then=a, orelse=b):
            return f"if {expr(t)} then {expr(a)} else {expr(b)}"
    raise TypeError(f"not an expression: {e!r}")


def _sub(s) -> str:
    match s:
        case A.Slice(lo=lo, hi=hi):
            return f"{'' if lo is None else expr(lo)}:{'' if hi is None else expr(hi)}"
        case A.EllipsisIndex():
            return "..."
        case A.NewAxis():
            return "None"
    return expr(s)


def type_expr(t: A.TypeExpr) -> str:
    prefix = "" if t.dtype == "float" else t.dtype
    return f"{prefix}[{', '.join(expr(d) for d in t.dims)}]"


def _stmts(stmts, indent: int) -> list[str]:
    out: list[str] = []
    for s in stmts:
        out.extend(stmt(s, indent))
    return out


def stmt(s: A.Stmt, indent: int = 1) -> list[str]:
    pad = "  " * indent
    match s:
        case A.Assign(targets=t, value=v):
            return [f"{pad}{', '.join(t)} = {expr(v)}"]
        case A.Return(values=vs):
            return [f"{pad}return {', '.join(expr(v) for v in vs)}"]
        case A.Repeat(count=c, var=var, shared=shared, body=body):
            head = f"{pad}repeat {expr(c)}" + (f" as {var}" if var else "") + (" shared" if shared else "")
            return [head + " {", *_stmts(body, indent + 1), pad + "}"]
        case A.If():
            return _if(s, indent, pad)
        case A.ParamStmt(name=n, type=t, init=init):
            return [f"{pad}param {n}: {type_expr(t)}" + ("" if init is None else f" = {expr(init)}")]
        case A.Require(test=t, message=m):
            return [f"{pad}require {expr(t)}" + ("" if m is None else f", {_quote(m)}")]
    raise TypeError(f"not a statement: {s!r}")


def _if(s: A.If, indent: int, pad: str, lead: str | None = None) -> list[str]:
    lines = [f"{lead or pad}if {expr(s.test)} {{", *_stmts(s.body, indent + 1)]
    if len(s.orelse) == 1 and isinstance(s.orelse[0], A.If):
        lines += _if(s.orelse[0], indent, pad, lead=f"{pad}}} else ")
        return lines
    if s.orelse:
        lines += [pad + "} else {", *_stmts(s.orelse, indent + 1)]
    lines.append(pad + "}")
    return lines


def _param(p: A.Param) -> str:
    if isinstance(p, A.TensorParam):
        return f"{p.name}: {type_expr(p.type)}"
    return f"{p.name} = {expr(p.default)}"


def item(i: A.Item) -> list[str]:
    match i:
        case A.Import(path=p):
            return [f"import {_quote(p)}"]
        case A.DimDecl(items=items):
            return ["dim " + ", ".join(d.name + ("" if d.value is None else f" = {expr(d.value)}") for d in items)]
        case A.OptionDecl(items=items):
            return ["option " + ", ".join(f"{d.name} = {expr(d.value)}" for d in items)]
        case A.Require():
            return stmt(i, 0)
        case A.Definition(kind=k, name=n, params=ps, returns=ret, body=body):
            head = f"{k} {n}({', '.join(_param(p) for p in ps)})"
            if ret is not None:
                head += " -> " + ", ".join(type_expr(t) for t in ret)
            return ["", head + " {", *_stmts(body, 1), "}"]
    raise TypeError(f"not an item: {i!r}")


def module(m: A.Module) -> str:
    """The whole file as canonical source."""
    lines: list[str] = []
    for i in m.items:
        lines.extend(item(i))
    return "\n".join(lines).lstrip("\n") + "\n"
