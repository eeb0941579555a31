"""Which layers stop a model from decoding token by token, and why (``analyze --decode``).

A step sees one new position; a layer can take part only if its output at a position reads
that position and earlier ones, through a state its structure defines. Read from the IR:
shapes (which axis is the sequence dim N), op kinds and their attributes, and the parts of
each MixSpec. The code generator applies the same rules when it writes a module's decoding
plan (codegen/decode/plan.py); tests/analysis/test_decode.py checks that both agree.
"""

from __future__ import annotations

import networkx as nx
import sympy

from seqdsl.ir import decode_window as W
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind
from seqdsl.ir.tables import PrefixTables, prefix_tables

_WHOLE_SEQUENCE = {
    OpKind.POOL: "pools windows of the {n} axis",
    OpKind.SEQ_PROJECT: "a learned projection along {n} mixes every position",
    OpKind.SORT_BLOCKS: "sorts blocks of the whole sequence",
    OpKind.MOE: "routes tokens with a capacity that depends on every token of the batch",
    OpKind.FIXED_POINT: "a fixed-point iteration whose stopping test reads the whole sequence",
    OpKind.RECURRENT: "runs segment by segment; a step inside a segment is not derived",
}
_POSITION_WISE = (OpKind.UNARY, OpKind.BINARY, OpKind.DROPOUT, OpKind.GET, OpKind.EMBED, OpKind.INPUT,
                  OpKind.OUTPUT, OpKind.PARAM, OpKind.BUFFER, OpKind.POSITIONS)


def seq_dim(g: Graph) -> sympy.Symbol | None:
    """The sequence dim: axis 1 of the entry's first input (``tokens: int[B, N]``)."""
    if not g.inputs or g.inputs[0].out.rank < 2:
        return None
    d = sympy.sympify(g.inputs[0].out.shape[1])
    return d if d.is_Symbol else None


def _prefix(d, n, prefixed: bool = False):
    """P when the axis d is P + n with P free of n (inside a segment's body, where P rows of
    memory come before the segment's n), 0 when d is n, else None."""
    d = sympy.sympify(d)
    if d == n:
        return sympy.Integer(0)
    if prefixed and _uses(d, n) and not _uses(sympy.simplify(d - n), n):
        return sympy.simplify(d - n)
    return None


def _seq_axes(shape, n, prefixed: bool = False) -> list[int]:
    return [i for i, d in enumerate(shape) if _prefix(d, n, prefixed) is not None]


def _uses(expr, n) -> bool:
    return expr is not None and n in sympy.sympify(expr).free_symbols


def _axes(shape, n) -> list[int]:
    return _seq_axes(shape, n)


def entry_refusal(g: Graph, n: sympy.Symbol | None) -> str | None:
    """Why the entry as a whole cannot decode along ``n`` (None: its layers decide). A
    mixer entry with several inputs is costed per position too; ``step`` itself takes
    models whose one input is the token ids."""
    if n is None:
        return "the entry has no sequence dim N"
    win = W.windows(g, n)
    for p in g.outputs:
        if not _axes(g.type_of(p).shape, n) and not W.output_ok(g.type_of(p).shape, n, win):
            return f"the output {g.type_of(p)} has no {n} axis: nothing to generate"
    return None


def refusal(g: Graph, node: Node, n: sympy.Symbol, prefixed: bool = False,
            win: W.Windows | None = None, tables: PrefixTables | None = None) -> str | None:
    """Why ``node`` cannot run one position at a time (None: it can). ``prefixed``: inside a
    segment recurrence's step, where an axis P + n holds P rows of memory first. ``win``: the
    graph's window slices (seqdsl/ir/decode_window.py), ``tables`` its prefix-consistent
    position tables (seqdsl/ir/tables.py); found when not given."""
    if not prefixed:
        tables = prefix_tables(g, n) if tables is None else tables
        if node.id in tables.nodes:
            return None                   # a factorised position table: built whole, its rows read
        win = W.windows(g, n) if win is None else win
        if node.id in win.slices:
            return None                   # x[:, N - M:]: keeps its last M − 1 input rows
        if node.id in win.rerun:
            return W.rerun_refusal(g, node, n)
        if W.window_queries(g, node, win):
            return W.window_mix_refusal(g, node, n, win)
    ins = [g.type_of(p) for p in node.inputs]
    for t in ins + list(node.outs):
        for d in t.shape:
            if _uses(d, n) and _prefix(d, n, prefixed) is None:
                return f"an axis of size {d} depends on the sequence length {n}"
    k = node.kind

    def seq(shape, n) -> list[int]:   # the sequence axes, memory-prefixed ones inside a segment's step
        return _seq_axes(shape, n, prefixed)

    on_seq = any(seq(t.shape, n) for t in ins + list(node.outs))
    if not on_seq:
        return f"a token mixer that does not mix along {n}" if k == OpKind.MIX else None
    if k == OpKind.BINARY and _uses(node.attr("scalar"), n):
        return f"uses the length {n} as a number"
    if k in _POSITION_WISE:
        return None
    x = ins[0] if ins else None
    last = x is not None and x.rank - 1 in seq(x.shape, n)
    if k in (OpKind.LINEAR, OpKind.MLP, OpKind.HASH):
        return f"acts along the {n} axis" if last else None
    if k == OpKind.NORM:
        if node.attr("fn") == "batchnorm":
            return "batch norm takes its statistics over the whole sequence"
        return f"normalises along the {n} axis" if last else None
    if k in (OpKind.SOFTMAX, OpKind.REDUCE):
        over = node.attr("axis") % x.rank in seq(x.shape, n)
        return f"{node.attr('fn') or 'softmax'} over the {n} axis reads every position" if over else None
    if k == OpKind.MATMUL:
        b = ins[1]
        if last or (b.rank >= 2 and b.rank - 2 in seq(b.shape, n)):
            return f"a matrix product that sums over the {n} axis"
        return None
    if k == OpKind.REARRANGE:
        if not seq(x.shape, n) and len(seq(node.out.shape, n)) == 1 and node.attr("expand") is not None:
            return None                        # a broadcast along N: the same at every position
        return None if len(seq(x.shape, n)) == 1 and len(seq(node.out.shape, n)) == 1 else \
            f"reshapes the {n} axis"
    if k == OpKind.SLICE:
        return _slice(node, x, n, prefixed)
    if k == OpKind.CONCAT:
        axis = node.attr("axis") % node.out.rank
        if prefixed and axis in seq(node.out.shape, n) and not any(_uses(t.shape[axis], n) for t in ins[:-1]):
            return None                          # memory before the segment: a prefix every position sees
        return f"concatenates along the {n} axis" if axis in seq(node.out.shape, n) else None
    if k == OpKind.CONV1D:
        return None if node.attr("causal") else "a centred (non-causal) convolution reads later positions"
    if k == OpKind.MIX:
        return mix_refusal(g, node, n, prefixed)
    if k == OpKind.RECURRENT and not prefixed:
        return _segments(node)
    return _WHOLE_SEQUENCE.get(k, f"no decoding rule for {k.value}").format(n=n)


def _segments(node: Node) -> str | None:
    """``recurrent(step, x, state, segment = S)`` decodes when the step's first output is
    causal in its segment, the carried state (memory) a prefix every position sees: a
    decoding step re-runs the step over the segment so far."""
    body: Graph = node.attr("body")
    s = sympy.sympify(node.attr("segment"))
    if not s.is_Symbol or sympy.sympify(body.inputs[0].out.shape[-2]) != s:
        return f"the step's input is not laid out [.., {s}, D]"
    out = body.outputs[0]
    keep = nx.ancestors(body.nx, out.node) | {out.node}
    for b in body.nodes():
        if b.id in keep and b.kind != OpKind.INPUT:
            why = refusal(body, b, s, prefixed=True)
            if why is not None:
                return f"its step: {b.name}: {why}"
    if sympy.sympify(body.type_of(out).shape[-2]) != s:
        return "the step's output is not one row per position of the segment"
    return None


def _slice(node: Node, x, n, prefixed: bool = False) -> str | None:
    shape = iter(x.shape)
    for item in node.attr("index"):
        if item[0] == "new":
            continue
        d = sympy.sympify(next(shape))
        if _prefix(d, n, prefixed) is not None and d != n:
            return f"takes part of the {d} axis"
        if d != n:
            if item[0] == "slice" and _uses(item[2], n):    # x[:N] of a longer table: rows 0 … N−1
                return f"takes the first {n} rows of an axis of {d} (a step would read row 0)"
            continue
        if item[0] == "index" or sympy.sympify(item[1]) != 0 or sympy.simplify(sympy.sympify(item[2]) - n) != 0:
            return f"takes part of the {n} axis (which positions depends on the length)"
    return None


def mix_refusal(g: Graph, node: Node, n, prefixed: bool = False) -> str | None:
    """A mixer decodes when its mask is causal and its family has a state for that mask."""
    spec = node.spec
    prefix = {}
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is not None:
            prefix[role] = _prefix(g.type_of(p).shape[-2], n, prefixed)
            if prefix[role] is None:
                return f"its {role} runs over {g.type_of(p).shape[-2]}, not over the sequence {n}"
    offset = sympy.simplify(prefix.get("k", 0) - prefix.get("q", 0))   # memory keys before the first query
    leaves = M.mask_leaves(spec.mask)
    terms = M.conjuncts(spec.mask)
    toeplitz = next((x for x in leaves if isinstance(x, M.Toeplitz)), None)
    if toeplitz is not None and not toeplitz.causal:
        return "a bidirectional convolution (a second pass runs backwards in time from the end)"
    if not spec.causal:
        return f"the mask {spec.mask} lets a query see later keys (no causal term)"
    fam = spec.family
    if fam == "toeplitz":
        if len(leaves) > 1:
            return f"a Toeplitz mix with another mask term ({spec.mask}) has no derived state"
        if isinstance(toeplitz.kernel, M.SSMKernel) and toeplitz.kernel.disc == "dss":
            return f"DSS normalises its kernel over the length {n}: earlier outputs change with {n}"
        return None
    if fam in ("linear", "decayed_linear"):
        if any(not isinstance(t, (M.Causal, M.Decay)) for t in terms) or any(
                isinstance(t, M.Causal) and t.offset != 0 for t in leaves):
            return f"a linear mixer's state is derived for causal() & decay(...) masks, not {spec.mask}"
        return None
    if fam not in ("softmax", "content_sparse"):
        return f"no decoding state is derived for the {fam} family"
    causal = [t for t in terms if isinstance(t, M.Causal)]
    if not causal or any(sympy.simplify(t.offset - offset) != 0 for t in causal):
        return f"the KV cache is derived for masks with causal() as a term, not {spec.mask}"
    for leaf in leaves:
        if isinstance(leaf, M.RandomBlocks):
            return f"{leaf}: the draw depends on the number of blocks in {n}"
        if isinstance(leaf, M.BlockMap):
            return f"{leaf}: the block order is computed from the whole sequence"
        if isinstance(leaf, M.KeyRange) and leaf.stop is None:
            return f"{leaf}: keys up to the last position"
        if any(_uses(getattr(leaf, f, None), n) for f in ("size", "block", "stride", "count", "start", "stop")):
            return f"{leaf}: the mask depends on the length {n}"
    if isinstance(spec.score, M.Dot) and spec.score.bias is not None and _uses(spec.score.bias.buckets, n):
        return f"the relative bias has {n} buckets"
    return None
