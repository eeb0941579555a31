"""The cost report: one row per layer of the graph, the chosen algorithm and every
candidate for mixers, the total, and the leading term in N."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from seqdsl.analysis import mixers
from seqdsl.analysis.estimates import KEYS, SRAM, Estimates
from seqdsl.analysis.ops import Context, fixed_point_backward, op_estimates
from seqdsl.analysis.select import MACHINES, Machine, choose
from seqdsl.ir.graph import Graph, Node, OpKind

SKIP = (OpKind.INPUT, OpKind.PARAM, OpKind.BUFFER, OpKind.GET, OpKind.OUTPUT)


@dataclass
class LayerReport:
    name: str
    op: str
    algorithm: str
    estimates: Estimates
    candidates: list[dict] = field(default_factory=list)
    exact: bool = True


@dataclass
class Report:
    model: str
    sizes: dict[str, sympy.Basic]
    layers: list[LayerReport]
    total: Estimates
    n_symbol: sympy.Symbol | None
    machine: Machine
    backward: bool
    decode: object = None      # a DecodeReport when asked for (--decode): the "decode" section
    stored_params: sympy.Expr | None = None   # dense weights stored (param_count: trained non-zeros)

    def subs(self) -> dict:
        out = {sympy.Symbol(k, positive=True, integer=True): v for k, v in self.sizes.items() if k != "SRAM"}
        out.update({sympy.Symbol(k, real=True): v for k, v in self.sizes.items() if k != "SRAM"})
        out[SRAM] = self.sizes["SRAM"]
        return out

    def value(self, e: sympy.Expr) -> float:
        """The expression at the report's sizes (nan if a size is missing)."""
        e = sympy.sympify(e)
        # by name, so that an expression parsed back from the JSON (plain symbols) works too
        v = e.xreplace({s: self.sizes[s.name] for s in e.free_symbols if s.name in self.sizes})
        try:
            return float(v)
        except TypeError:
            return float("nan")

    def _row(self, est: Estimates) -> dict:
        row = {k: _text(getattr(est, k)) for k in KEYS}
        row["big_o"] = {"time": big_o(est.flops, self.n_symbol), "memory": big_o(est.activation_bytes, self.n_symbol)}
        row["values"] = {k: self.value(getattr(est, k)) for k in KEYS}
        return row

    def to_dict(self) -> dict:
        """The JSON of ``seqdsl analyze complexity --json`` (SPEC §5)."""
        layers = []
        for lr in self.layers:
            row = {"name": lr.name, "op": lr.op, "algorithm": lr.algorithm,
                   "candidates": lr.candidates}
            row.update(self._row(lr.estimates))
            if not lr.exact:
                row["note"] = "the mask's pair count is an upper bound (a union without a closed form)"
            layers.append(row)
        return {
            "model": self.model,
            "sizes": {k: _json_number(v) for k, v in self.sizes.items()},
            "machine": self.machine.name,
            "pass": "forward+backward" if self.backward else "forward",
            "layers": layers,
            "total": self._total_row(),
        } | ({} if self.decode is None else {"decode": _decode_dict(self.decode, self)})

    def _total_row(self) -> dict:
        """The total; ``param_count_stored``: the weights stored dense, when a fixed sparsity
        pattern makes them more than ``param_count`` (the trained non-zeros)."""
        row = self._row(self.total)
        if self.stored_params is not None:
            row["param_count_stored"] = _text(self.stored_params)
            row["values"]["param_count_stored"] = self.value(self.stored_params)
        return row


def _decode_dict(decode, report: Report) -> dict:
    from seqdsl.analysis.decode import decode_dict

    return decode_dict(decode, report)


def _json_number(v):
    v = sympy.sympify(v)
    return int(v) if v.is_Integer else float(v)


# The names sympify resolves to sympy's own objects (what ``from sympy import *`` binds).
_SYMPY_NAMES = {k for k in sympy.__all__ if not isinstance(getattr(sympy, k, None), sympy.Symbol)}


def _text(e: sympy.Expr) -> str:
    """The expression as a string that ``sympy.sympify`` parses back (SPEC §5).

    Expanded, not simplified (simplify() folds sums of logs into unreadable products).
    A size whose name sympify would read as one of its own objects (N is sympy.N, S is
    sympy.S, E is Euler's number …) is written ``Symbol('N')``."""
    e = sympy.expand(sympy.sympify(e))
    clashes = {s: sympy.Symbol(f"Symbol('{s.name}')") for s in e.free_symbols if s.name in _SYMPY_NAMES}
    return str(e.xreplace(clashes)) if clashes else str(e)


def _simplify(est: Estimates) -> Estimates:
    return Estimates(*(sympy.expand(sympy.sympify(getattr(est, k)))
                       for k in ("flops", "matmul_flops", "activation_bytes", "hbm_bytes", "param_count")))


# ---- big-O ---------------------------------------------------------------------------

def _growth(term: sympy.Expr, n: sympy.Symbol) -> tuple[sympy.Expr, int]:
    """(a, b) such that term ~ c · N^a · log(N)^b as N → ∞."""
    if not term.has(n):
        return sympy.Integer(0), 0
    if term.is_Add:
        return max((_growth(t, n) for t in term.args), key=_order)
    if isinstance(term, (sympy.Min, sympy.Max)):
        pick = min if isinstance(term, sympy.Min) else max
        return pick((_growth(t, n) for t in term.args), key=_order)
    if isinstance(term, sympy.log):
        return sympy.Integer(0), 1
    if isinstance(term, (sympy.floor, sympy.ceiling)):
        return _growth(term.args[0], n)
    if term == n:
        return sympy.Integer(1), 0
    if term.is_Pow:
        a, b = _growth(term.base, n)
        exp = term.exp
        return a * exp, int(b * exp) if exp.is_Integer else b
    if term.is_Mul:
        a, b = sympy.Integer(0), 0
        for factor in term.args:
            fa, fb = _growth(factor, n)
            a, b = a + fa, b + fb
        return a, b
    return sympy.Integer(1), 0   # an unknown function of N: assume linear growth


def _order(g: tuple[sympy.Expr, int]) -> tuple[float, int]:
    return float(g[0]), g[1]


def big_o(expr: sympy.Expr, n: sympy.Symbol | None) -> str:
    """The leading term in N as N → ∞ with the other sizes fixed, e.g. ``O(N**2)``."""
    if n is None:
        return "O(1)"
    e = sympy.expand(sympy.expand_log(sympy.sympify(expr), force=True))
    if e == 0:
        return "O(1)"
    a, b = _growth(e, n)
    if a == 0 and b == 0:
        return "O(1)"
    parts = []
    if a != 0:
        parts.append(str(n) if a == 1 else f"{n}**{a}")
    if b:
        parts.append(f"log({n})" if b == 1 else f"log({n})**{b}")
    return f"O({'*'.join(parts)})"


# ---- the analysis ----------------------------------------------------------------------

def _owned_params(g: Graph, n: Node) -> sympy.Expr:
    """Weights the node owns (named under it); a fixed sparsity pattern counts its non-zeros."""
    from seqdsl.analysis.ops import _weight_density

    total = sympy.Integer(0)
    for p in n.inputs:
        src = g.node(p.node)
        if src.kind == OpKind.PARAM and src.name.startswith(n.name + "."):
            count = src.out.numel()
            if n.attr("sparsity") is not None and p.role in ("weight", "w1", "w2"):
                rows, cols = src.out.shape
                count = count * _weight_density(n, rows, cols)
            total += count
    return total


def _unowned_params(g: Graph) -> list[Node]:
    owned = set()
    for n in g.nodes():
        for p in n.inputs:
            src = g.node(p.node)
            if src.kind == OpKind.PARAM and src.name.startswith(n.name + "."):
                owned.add(src.id)
    return [n for n in g.nodes(OpKind.PARAM) if n.id not in owned]


def _op_name(n: Node) -> str:
    return f"mix/{n.spec.family}" if n.kind == OpKind.MIX else n.kind.value


def analyze_graph(graph: Graph, model: str, sizes: dict, backward: bool = False,
                  machine: str | Machine = "cpu", forced: dict[str, str] | None = None) -> Report:
    """Cost of every layer of ``graph`` at ``sizes`` (dims without a value count as 1)."""
    m = MACHINES[machine] if isinstance(machine, str) else machine
    all_sizes = dict(sizes)
    for sym in _free_dims(graph):
        all_sizes.setdefault(sym, sympy.Integer(1))
    for sym, value in mixers.TILE_DEFAULTS.items():
        all_sizes.setdefault(sym.name, sympy.Integer(value))
    all_sizes["SRAM"] = sympy.Integer(m.sram_elements)
    subs = {}
    for k, v in all_sizes.items():
        if k == "SRAM":
            continue
        subs[sympy.Symbol(k, positive=True, integer=True)] = v
        subs[sympy.Symbol(k, real=True)] = v
    layers = _analyse(graph, subs, m, backward, forced or {})
    total = Estimates()
    for lr in layers:
        total = total + lr.estimates
    total = _simplify(total)
    n_symbol = sympy.Symbol("N", positive=True, integer=True) if "N" in all_sizes else None
    from seqdsl.analysis.params import stored_param_count
    return Report(model, all_sizes, layers, total, n_symbol, m, backward, stored_params=stored_param_count(graph))


def _free_dims(graph: Graph) -> set[str]:
    names = set()
    for n in graph.nodes():
        for t in n.outs:
            for d in t.shape:
                names |= {str(s) for s in sympy.sympify(d).free_symbols}
        body = n.attr("body")
        if body is not None:
            names |= _free_dims(body)
    return names


def _analyse(graph: Graph, subs: dict, m: Machine, backward: bool, forced: dict[str, str]) -> list[LayerReport]:
    def body_total(body: Graph) -> Estimates:
        total = Estimates()
        for lr in _analyse(body, subs, m, False, forced):
            total = total + lr.estimates
        return total

    ctx = Context(body_total)
    rows: list[LayerReport] = []
    for n in graph.nodes():
        if n.kind in SKIP:
            continue
        params = _owned_params(graph, n)
        if n.kind == OpKind.MIX:
            cands = mixers.candidates(graph, n, subs)
            want = forced.get(n.name) or n.spec.hint("algorithm")
            if want is not None and want not in {c.algorithm for c in cands}:
                raise ValueError(f"{n.name}: algorithm {want!r} is not available here; "
                                 f"candidates: {', '.join(c.algorithm for c in cands)}")
            best, times = choose(cands, m, subs, want)
            cand_rows = []
            for c in cands:
                est = c.forward + c.backward if backward else c.forward
                cand_rows.append({"algorithm": c.algorithm, "flops": _text(est.flops),
                                  "matmul_flops": _text(est.matmul_flops),
                                  "activation_bytes": _text(est.activation_bytes),
                                  "hbm_bytes": _text(est.hbm_bytes), "estimated_seconds": times[c.algorithm]})
            est = best.forward + best.backward if backward else best.forward
            est = Estimates(est.flops, est.matmul_flops, est.activation_bytes, est.hbm_bytes, params)
            rows.append(LayerReport(n.name, _op_name(n), best.algorithm, _simplify(est), cand_rows, best.exact))
            continue
        fwd = op_estimates(graph, n, ctx)
        est = fwd
        if backward:
            est = fwd + (fixed_point_backward(graph, n, ctx) if n.kind == OpKind.FIXED_POINT else
                         Estimates(2 * fwd.flops, 2 * fwd.matmul_flops, 0, 2 * fwd.hbm_bytes))
        if n.kind not in (OpKind.MOE, OpKind.FIXED_POINT, OpKind.RECURRENT):
            est = Estimates(est.flops, est.matmul_flops, est.activation_bytes, est.hbm_bytes, params)
        else:
            est = Estimates(est.flops, est.matmul_flops, est.activation_bytes, est.hbm_bytes,
                            est.param_count + params)
        rows.append(LayerReport(n.name, _op_name(n), "-", _simplify(est)))
    for p in _unowned_params(graph):
        rows.append(LayerReport(p.name, "param", "-", Estimates(param_count=p.out.numel())))
    return rows
