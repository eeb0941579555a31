"""Which layers keep a state when a model generates token by token, and which prevent it
(issue 13). One set of rules, read from the IR alone, never per model, by both the code
generator's decoding plan (codegen/decode/plan.py) and ``analyze --decode``
(seqdsl/analysis/decode_rules.py, decode.py), so that the two agree by construction.

Every node gets one class (:func:`decode_class`):

- **none** (position-wise): computes each position from that position only — projections,
  norms over features, elementwise work, embeddings, LSH ids;
- **positional**: reads the absolute position — ``arange(N)``, ``sinusoidal(N, D)``,
  rotary, a position table sliced to N or the flattened end of a prefix-consistent
  factorised table (seqdsl/ir/tables.py); a step evaluates it at the token's position;
- a **stateful** family (:data:`STATEFUL`): a causal mixer, a causal short convolution, a
  segment recurrence; its state is the family's (codegen/<family>/step.py);
- **window**, **rerun**, **window-softmax**: a suffix ``x[:, N − M:]``, the layers below it
  without an N axis, a softmax whose queries are its rows (seqdsl/ir/decode_window.py);
- anything else that reads across the sequence raises :class:`Refuse`, naming the layer, its
  position in the ``.seq`` file and why.

The sequence dim is the second axis of the entry's first input (``tokens: int[B, N]``).
"""

from __future__ import annotations

import networkx as nx
import sympy

from seqdsl.ir import decode_window as W
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind
from seqdsl.ir.tables import PrefixTables

#: the families whose state the step functions know (codegen/<family>/step.py; conv1d and
#: recurrent segments: codegen/torch/decode_families.py; window: codegen/torch/decode_window.py)
STATEFUL = ("softmax", "linear", "toeplitz", "conv1d", "recurrent", "window")
#: ops that act on each position alone as long as they do not act along the sequence axis
_LAST_AXIS = {OpKind.LINEAR, OpKind.MLP, OpKind.HASH}
_ELEMENTWISE = {OpKind.UNARY, OpKind.BINARY, OpKind.DROPOUT, OpKind.GET, OpKind.EMBED, OpKind.INPUT}


class Refuse(Exception):
    """Why a node cannot run one position at a time: ``why`` alone, and as a message with the
    node's position in the file, its name and kind (``str``)."""

    def __init__(self, node: Node, why: str):
        self.node, self.why = node, why
        super().__init__(f"{where(node)}{node.name} ({node.kind.value}): {why}")


def where(n: Node) -> str:
    """``file:line:col: `` of a node (empty when it has no position)."""
    return f"{n.pos}: " if n.pos.line else ""


def _refuse(n: Node, why: str) -> Refuse:
    return Refuse(n, why)


def seq_dim(g: Graph) -> sympy.Symbol | None:
    """The sequence dim: axis 1 of the entry's first input, when it is a plain dim."""
    inputs = g.inputs
    if not inputs or inputs[0].out.rank < 2:
        return None
    d = sympy.sympify(inputs[0].out.shape[1])
    return d if d.is_Symbol else None


def _uses(expr, n: sympy.Symbol) -> bool:
    return n in sympy.sympify(expr).free_symbols if expr is not None else False


def _prefix(d, n: sympy.Symbol, prefixed: bool = False):
    """P when the axis d is P + n with P free of n (only inside a segment's body, where P rows
    of memory come before the segment's n), 0 when d is n, else None."""
    d = sympy.sympify(d)
    if d == n:
        return sympy.Integer(0)
    if prefixed and _uses(d, n) and not _uses(sympy.simplify(d - n), n):
        return sympy.simplify(d - n)
    return None


def _axes(shape, n: sympy.Symbol, prefixed: bool = False) -> list[int]:
    return [i for i, d in enumerate(shape) if _prefix(d, n, prefixed) is not None]


def output_refusal(g: Graph, n: sympy.Symbol, win: W.Windows) -> str | None:
    """Why the entry's outputs give nothing to generate (None: each has the N axis or a
    suffix of it at axis 1)."""
    for p in g.outputs:
        t = g.type_of(p)
        if not _axes(t.shape, n) and not W.output_ok(t.shape, n, win):
            return f"the output {t} has no {n} axis: nothing to generate"
    return None


def decode_class(g: Graph, node: Node, n: sympy.Symbol, win: W.Windows, tables: PrefixTables) -> str:
    """The class of one node of the entry's graph (the module docstring); raises Refuse."""
    if node.id in tables.nodes:                      # built whole at its size, its rows read
        return "positional" if node.id in tables.ends else "none"
    if node.id in win.slices:
        return "window"
    if node.id in win.rerun:
        why = W.rerun_refusal(g, node, n)
        if why is not None:
            raise Refuse(node, why)
        return "rerun"
    if W.window_queries(g, node, win):
        why = W.window_mix_refusal(g, node, n, win)
        if why is not None:
            raise Refuse(node, why)
        return "window-softmax"
    return classify(g, node, n)


def classify(g: Graph, node: Node, n: sympy.Symbol, prefixed: bool = False) -> str:
    """'none', 'positional' or a stateful family (STATEFUL) for one node; raises :class:`Refuse`.
    ``prefixed``: inside a segment recurrence's step, where an axis P + n holds P rows of
    memory before the segment's n."""
    ins = [g.type_of(p) for p in node.inputs]
    outs = list(node.outs)
    for t in ins + outs:
        for d in t.shape:
            d = sympy.sympify(d)
            if _uses(d, n) and _prefix(d, n, prefixed) is None:
                raise _refuse(node, f"an axis of size {d} depends on the sequence length {n}")
    on_seq = any(_axes(t.shape, n, prefixed) for t in ins + outs)
    k = node.kind
    if k in (OpKind.PARAM, OpKind.BUFFER):
        return "positional" if on_seq else "none"      # a table sliced to N (a weight fixing N is refused earlier)
    if k == OpKind.POSITIONS:
        if _uses(node.out.shape[0], n):
            return "positional"
        return "none"
    if not on_seq:
        if k == OpKind.MIX:
            raise _refuse(node, f"a token mixer that does not mix along {n}")
        return "none"
    if k == OpKind.BINARY and _uses(node.attr("scalar"), n):
        raise _refuse(node, f"uses the length {n} as a number: the output at a position depends on the whole length")
    if k in _ELEMENTWISE:
        if k == OpKind.UNARY and node.attr("fn") == "rotary":
            return "positional"
        return "none"
    if k == OpKind.OUTPUT:
        return "none"
    x = ins[0] if ins else None
    axis_last = x is not None and x.rank - 1 in _axes(x.shape, n, prefixed)
    if k in _LAST_AXIS:
        if axis_last:
            raise _refuse(node, f"acts along the {n} axis")
        return "none"
    if k == OpKind.NORM:
        if node.attr("fn") == "batchnorm":
            raise _refuse(node, "batch norm takes its statistics over the whole sequence")
        if axis_last:
            raise _refuse(node, f"normalises along the {n} axis")
        return "none"
    if k in (OpKind.SOFTMAX, OpKind.REDUCE):
        axis = node.attr("axis") % x.rank
        if axis in _axes(x.shape, n, prefixed):
            raise _refuse(node, f"{node.attr('fn') or 'softmax'} over the {n} axis reads every position")
        return "none"
    if k == OpKind.MATMUL:
        a, b = ins[0], ins[1]
        if a.rank - 1 in _axes(a.shape, n, prefixed) or (b.rank >= 2 and b.rank - 2 in _axes(b.shape, n, prefixed)):
            raise _refuse(node, f"a matrix product that sums over the {n} axis")
        return "none"
    if k == OpKind.REARRANGE:
        if not _axes(x.shape, n, prefixed) and len(_axes(node.out.shape, n, prefixed)) == 1 and node.attr("expand") is not None:
            return "none"                       # broadcast along N: the same at every position
        if len(_axes(x.shape, n, prefixed)) != 1 or len(_axes(node.out.shape, n, prefixed)) != 1:
            raise _refuse(node, f"reshapes the {n} axis")
        return "none"
    if k == OpKind.SLICE:
        return _slice(node, x, n, prefixed)
    if k == OpKind.CONCAT:
        axis = node.attr("axis") % node.out.rank
        if prefixed and axis in _axes(node.out.shape, n, prefixed) and not any(_uses(t.shape[axis], n) for t in ins[:-1]):
            return "none"                     # memory before the segment: a prefix every position sees
        if axis in _axes(node.out.shape, n, prefixed):
            raise _refuse(node, f"concatenates along the {n} axis (tokens before the sequence)")
        return "none"
    if k == OpKind.CONV1D:
        if not node.attr("causal"):
            raise _refuse(node, "a centred (non-causal) convolution reads later positions")
        return "conv1d"
    if k == OpKind.MIX:
        return _mix(g, node, n, prefixed)
    if k == OpKind.RECURRENT and not prefixed:
        return _segments(node, n)
    why = {
        OpKind.POOL: f"pools windows of the {n} axis",
        OpKind.SEQ_PROJECT: f"a learned projection along {n} mixes every position",
        OpKind.SORT_BLOCKS: "sorts blocks of the whole sequence",
        OpKind.MOE: "routes with a capacity that depends on every token of the batch",
        OpKind.FIXED_POINT: "its stopping test reads the whole sequence",
    }.get(k, f"no decoding rule for {k.value}")
    raise _refuse(node, why)


def _segments(node: Node, n: sympy.Symbol) -> str:
    """``recurrent(step, x, state, segment = S)``: decodable when the step's first output is
    causal in its segment, the carried state (memory) being a prefix every position sees. A
    decoding step re-runs the step over the segment so far (O(S) rows per token) and carries
    the state when a segment completes."""
    body: Graph = node.attr("body")
    s = sympy.sympify(node.attr("segment"))
    if not s.is_Symbol or sympy.sympify(body.inputs[0].out.shape[-2]) != s:
        raise _refuse(node, f"the step's input is not laid out [.., {s}, D]")
    out = body.outputs[0]
    keep = nx.ancestors(body.nx, out.node) | {out.node}
    try:
        for b in body.nodes():      # positions and taps inside restart with each segment, in a re-run too
            if b.id in keep and b.kind != OpKind.INPUT:
                classify(body, b, s, prefixed=True)
        if sympy.sympify(body.type_of(out).shape[-2]) != s:
            raise _refuse(node, "the step's output is not one row per position of the segment")
    except Refuse as why:
        raise Refuse(node, f"its step: {why}") from None
    return "recurrent"


def _slice(node: Node, x, n: sympy.Symbol, prefixed: bool) -> str:
    shape = iter(x.shape)
    for item in node.attr("index"):
        if item[0] == "new":
            continue
        d = sympy.sympify(next(shape))
        if _prefix(d, n, prefixed) is not None and d != n:
            raise _refuse(node, f"takes part of the {d} axis")
        if d != n:
            if item[0] == "slice" and _uses(item[2], n):      # x[:N] of a longer table: rows 0 … N−1
                raise _refuse(node, f"takes the first {n} rows of an axis of {d} (a step would read row 0)")
            continue
        if item[0] == "index" or sympy.sympify(item[1]) != 0 or sympy.simplify(sympy.sympify(item[2]) - n) != 0:
            raise _refuse(node, f"takes part of the {n} axis (which positions depends on the length)")
    return "none"


def _mix(g: Graph, node: Node, n: sympy.Symbol, prefixed: bool) -> str:
    spec = node.spec
    prefix = {}
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is not None:
            prefix[role] = _prefix(g.type_of(p).shape[-2], n, prefixed)
            if prefix[role] is None:
                raise _refuse(node, f"its {role} runs over {g.type_of(p).shape[-2]}, not over the sequence {n}")
    offset = sympy.simplify(prefix.get("k", 0) - prefix.get("q", 0))    # keys before the queries' first
    toeplitz = next((x for x in M.mask_leaves(spec.mask) if isinstance(x, M.Toeplitz)), None)
    if toeplitz is not None and not toeplitz.causal:
        raise _refuse(node, "a bidirectional convolution (a second pass runs backwards in time from the end)")
    if not spec.causal:
        raise _refuse(node, f"the mask {spec.mask} lets a position see later ones (no causal term: not causal)")
    fam = spec.family
    leaves = M.mask_leaves(spec.mask)
    if fam == "toeplitz":
        t = next(x for x in leaves if isinstance(x, M.Toeplitz))
        if len(leaves) > 1:
            raise _refuse(node, f"a Toeplitz mix with another mask term ({spec.mask})")
        if isinstance(t.kernel, M.SSMKernel) and t.kernel.disc == "dss":
            raise _refuse(node, f"DSS normalises its kernel over the length {n}: earlier outputs change with {n}")
        return "toeplitz"
    if fam in ("linear", "decayed_linear"):
        if any(not isinstance(x, (M.Causal, M.Decay)) for x in M.conjuncts(spec.mask)) or \
                any(isinstance(x, M.Causal) and x.offset != 0 for x in leaves):
            raise _refuse(node, f"a linear mixer's state is derived for causal() & decay(...) masks, not {spec.mask}")
        return "linear"
    if fam in ("softmax", "content_sparse"):
        causal = [x for x in M.conjuncts(spec.mask) if isinstance(x, M.Causal)]
        if not causal or any(sympy.simplify(x.offset - offset) != 0 for x in causal):
            raise _refuse(node, f"the KV cache is derived for masks with causal() as a term, not {spec.mask}")
        for leaf in leaves:
            if isinstance(leaf, M.RandomBlocks):
                raise _refuse(node, f"{leaf}: the draw depends on the number of blocks in {n}")
            if isinstance(leaf, M.BlockMap):
                raise _refuse(node, f"{leaf}: the block map is computed from the whole sequence")
            if isinstance(leaf, M.KeyRange) and leaf.stop is None:
                raise _refuse(node, f"{leaf}: keys up to the last position")
            for f in ("size", "block", "stride", "count", "start", "stop"):
                if _uses(getattr(leaf, f, None), n):
                    raise _refuse(node, f"{leaf}: the mask depends on the length {n}")
        if isinstance(spec.score, M.Dot) and spec.score.bias is not None and _uses(spec.score.bias.buckets, n):
            raise _refuse(node, f"the relative bias has {n} buckets")
        return "softmax"
    raise _refuse(node, f"no decoding state is derived for the {fam} family")
