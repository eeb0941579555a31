"""Decoding through a suffix of the sequence: the "window re-run" layers (issue 13).

A model may take a fixed-length suffix of the sequence axis, ``x[:, N - M:]`` (Perceiver
AR's latents: the last M positions), and run layers on those M rows alone. Its output at
length N + 1 is not the output at length N plus one row: the suffix moved by one position,
so every layer downstream of the slice changes. Exact decoding still needs no whole-sequence
recompute:

- the slice keeps the last M − 1 rows of its input (a **window** slot); a step appends the
  new row and hands the layers below the M rows a full forward at the new length would;
- a layer downstream of the window whose tensors have no N axis (only window rows,
  weights, fixed tables) is **re-run** on the window at each step, as the forward itself
  (O(M²) per token for an attention among the M rows, O(M) for the rest);
- a mixer whose queries are the window rows and whose keys run over N, with the mask
  ``causal(offset = N − M)`` (query i of the window sits at position N − M + i), keeps a
  KV cache of every position like any causal softmax (detail ``"window"``: M queries per
  step, their positions read from the step's position).

The entry's output may then be window rows ([B, M, V]): a step returns its last row, the
logits of the new position (what a full forward at the new length gives for its last
position).

Pure IR: both the code generator's plan (codegen/decode/plan.py) and ``analyze --decode``
(seqdsl/analysis/decode_rules.py) read these rules, so that they agree by construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import networkx as nx
import sympy

from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind


@dataclass(frozen=True)
class Window:
    """A slice that keeps the last ``size`` rows of axis ``axis`` (the sequence axis)."""

    axis: int
    size: sympy.Expr
    batched: bool          # the sliced tensor's first axis is the batch (else: one table for all)


@dataclass(frozen=True)
class Windows:
    """The window slices of a graph and the nodes re-run on their rows at each step."""

    slices: dict[int, Window]
    rerun: frozenset[int]
    dims: frozenset            # the window lengths (M)

    def __bool__(self) -> bool:
        return bool(self.slices)


def _uses(expr, n: sympy.Symbol) -> bool:
    return expr is not None and n in sympy.sympify(expr).free_symbols


def suffix(g: Graph, node: Node, n: sympy.Symbol) -> Window | None:
    """The window of ``x[..., N − M:, ...]``: only the N axis sliced, from N − M (M free of N,
    not 0) to its end; None for any other slice."""
    if node.kind != OpKind.SLICE:
        return None
    x = g.type_of(node.input("x"))
    found, shape = None, iter(x.shape)
    for axis, item in enumerate(node.attr("index")):
        if item[0] != "slice":
            return None
        d = sympy.sympify(next(shape))
        lo, hi = sympy.sympify(item[1]), sympy.sympify(item[2])
        if lo == 0 and sympy.simplify(hi - d) == 0:
            continue                                   # a whole axis
        size = sympy.simplify(n - lo)
        if d != n or found is not None or sympy.simplify(hi - n) != 0 or _uses(size, n) or size == 0:
            return None
        found = (axis, size)
    if found is None:
        return None
    batch = sympy.sympify(g.inputs[0].out.shape[0]) if g.inputs else None
    return Window(found[0], found[1], x.rank > 1 and sympy.sympify(x.shape[0]) == batch)


def _on_seq(g: Graph, node: Node, n: sympy.Symbol) -> bool:
    return any(sympy.sympify(d) == n for t in [g.type_of(p) for p in node.inputs] + list(node.outs) for d in t.shape)


def windows(g: Graph, n: sympy.Symbol) -> Windows:
    """Every window slice of ``g`` along ``n`` and the nodes downstream of one that carry no
    ``n`` axis (re-run on the window at each step)."""
    slices = {node.id: w for node in g.nodes() if (w := suffix(g, node, n)) is not None}
    below: set[int] = set()
    for nid in slices:
        below |= nx.descendants(g.nx, nid)
    rerun = frozenset(i for i in below if i not in slices and g.node(i).kind not in (OpKind.OUTPUT,)
                      and not _on_seq(g, g.node(i), n))
    return Windows(slices, rerun, frozenset(w.size for w in slices.values()))


def mentions(obj, n: sympy.Symbol) -> bool:
    """True when a mask, score or attribute value (dataclasses, tuples, expressions) uses ``n``."""
    if isinstance(obj, sympy.Basic):
        return n in obj.free_symbols
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return False
    if dataclasses.is_dataclass(obj):
        return any(mentions(getattr(obj, f.name), n) for f in dataclasses.fields(obj))
    if isinstance(obj, (tuple, list, frozenset, set)):
        return any(mentions(x, n) for x in obj)
    return False


def rerun_refusal(g: Graph, node: Node, n: sympy.Symbol) -> str | None:
    """Why a node re-run on the window would differ from the forward at the new length (None:
    it would not). A step binds ``n`` to 1, so nothing it computes may read ``n``."""
    for t in [g.type_of(p) for p in node.inputs] + list(node.outs):
        if any(_uses(d, n) for d in t.shape):
            return f"re-run on the window, it has an axis of size {t} that depends on {n}"
    attrs = {k: node.attr(k) for k in ("scalar", "index", "expand", "axis")}
    if node.kind == OpKind.MIX:
        attrs["mask"], attrs["score"] = node.spec.mask, node.spec.score
    if any(mentions(v, n) for v in attrs.values()):
        return f"re-run on the window, it uses the length {n} as a number"
    return None


def window_queries(g: Graph, node: Node, w: Windows) -> bool:
    """True for a mixer whose queries run over a window length (M) rather than N."""
    if node.kind != OpKind.MIX or node.input("q") is None or not w:
        return False
    return sympy.sympify(g.type_of(node.input("q")).shape[-2]) in w.dims


def window_mix_refusal(g: Graph, node: Node, n: sympy.Symbol, w: Windows) -> str | None:
    """A mixer whose queries are window rows and whose keys and values run over ``n``:
    decodable with a KV cache when its mask is exactly ``causal(offset = n − M)`` (the queries
    the last M positions) and its score reads no position (no relative bias)."""
    q = g.type_of(node.input("q")).shape[-2]
    spec = node.spec
    for role in ("k", "v"):
        p = node.input(role)
        if p is None or sympy.sympify(g.type_of(p).shape[-2]) != n:
            return f"its queries are the last {q} positions, its {role} does not run over {n}"
    terms = [t for t in M.conjuncts(spec.mask) if not isinstance(t, M.Full)]
    if len(terms) != 1 or not isinstance(terms[0], M.Causal) or sympy.simplify(terms[0].offset - (n - q)) != 0:
        return (f"its queries are the last {q} positions: the KV cache is derived for the mask "
                f"causal(offset = {n} - {q}), not {spec.mask}")
    if spec.family != "softmax" or (isinstance(spec.score, M.Dot) and spec.score.bias is not None):
        return f"its queries are the last {q} positions: derived for a softmax without a positional bias"
    return None


def output_ok(shape, n: sympy.Symbol, w: Windows) -> bool:
    """An output decodes when its axis 1 is the sequence or a window (its last row: the new
    position)."""
    return len(shape) > 1 and (sympy.sympify(shape[1]) == n or sympy.sympify(shape[1]) in w.dims)
