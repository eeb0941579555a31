"""Which layers of a graph keep a state when the model generates token by token (issue 13).

Read from the IR alone, never per model. Every node gets one decoding class:

- **position-wise**: computes each position from that position only (projections, norms over
  features, elementwise work, embeddings, LSH ids): no state;
- **positional**: reads the absolute position — ``arange(N)``, ``sinusoidal(N, D)``, rotary,
  a learned position table sliced to N. In a step these see the position t of the token
  (the generated code passes ``seq=True`` / ``rt.seq_rows(N)``, see :func:`positional`);
- **stateful**: a causal sequence mixer or a causal short convolution; its state is one
  slot of the :class:`codegen.torch.decode.DecodeState` (what each family keeps: the
  family's ``step.py``);
- **window / re-run** (seqdsl/ir/decode_window.py): a suffix slice ``x[:, N - M:]`` keeps its
  last M − 1 input rows (a ``window`` slot); the layers below it without an N axis are re-run
  on the M rows at each step (a ``rerun`` detail on the stateful calls among them), and a
  softmax whose queries are those rows keeps a KV cache (detail ``window``);
- anything else that reads across the sequence (pooling, a reduction or softmax over N, a
  slice, concat or reshape of the sequence axis, a bidirectional or N-fixed mixer, the
  length N used as a number) means the model **cannot decode**; the reason names the layer
  and its position in the ``.seq`` file.

The sequence dim is the second axis of the entry's first input (``tokens: int[B, N]``); it
must be read from the inputs at each call (a module that fixes N cannot take one token).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import sympy

from seqdsl.ir import decode_window as W
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind
from seqdsl.ir.tables import prefix_tables

#: the families whose state the step functions know (codegen/<family>/step.py; recurrent
#: segments: codegen/torch/decode_families.py)
STATEFUL = ("softmax", "linear", "toeplitz", "conv1d", "recurrent", "window")
#: inside a recurrent segment's body: an axis P + S (P tokens of memory before the segment's S)
#: counts as the sequence axis, its first P positions a prefix every position sees
_PREFIXED = False
#: ops that act on each position alone as long as they do not act along the sequence axis
_LAST_AXIS = {OpKind.LINEAR, OpKind.MLP, OpKind.HASH}
_ELEMENTWISE = {OpKind.UNARY, OpKind.BINARY, OpKind.DROPOUT, OpKind.GET, OpKind.EMBED, OpKind.INPUT}


@dataclass(frozen=True)
class Slot:
    """One stateful call of the forward, in call order: the layer path and the family."""

    path: str
    kind: str            # softmax | linear | toeplitz | conv1d | recurrent | window
    detail: str = ""     # toeplitz: "lag" when an explicit kernel's taps run over N (one new tap per step);
    #                      softmax: "window" (queries: the window's rows); window: "batch" | "shared";
    #                      any kind: "rerun" (below a window: the plain call on the window's rows)


@dataclass(frozen=True)
class DecodePlan:
    seq: str | None                      # the sequence dim's name
    slots: tuple[Slot, ...] = ()
    positional: frozenset[int] = frozenset()   # node ids that read the absolute position
    windows: W.Windows | None = None     # suffix slices and the layers re-run below them
    reason: str | None = None            # why the model cannot decode (None: it can)

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Refuse(Exception):
    pass


def _where(n: Node) -> str:
    return f"{n.pos}: " if n.pos.line else ""


def _refuse(n: Node, why: str) -> _Refuse:
    return _Refuse(f"{_where(n)}{n.name} ({n.kind.value}): {why}")


def seq_dim(g: Graph) -> sympy.Symbol | None:
    """The sequence dim: axis 1 of the entry's first input, when it is a plain dim."""
    inputs = g.inputs
    if not inputs or inputs[0].out.rank < 2:
        return None
    d = sympy.sympify(inputs[0].out.shape[1])
    return d if d.is_Symbol else None


def _prefix(d, n: sympy.Symbol):
    """P when the axis d is P + n with P free of n (only inside a segment's body), else None."""
    d = sympy.sympify(d)
    if d == n:
        return sympy.Integer(0)
    if _PREFIXED and _uses(d, n) and not _uses(sympy.simplify(d - n), n):
        return sympy.simplify(d - n)
    return None


def _axes(shape, n: sympy.Symbol) -> list[int]:
    return [i for i, d in enumerate(shape) if _prefix(d, n) is not None]


def _uses(expr, n: sympy.Symbol) -> bool:
    return n in sympy.sympify(expr).free_symbols if expr is not None else False


def plan(g: Graph, runtime: set[str] | frozenset[str], fixed_by: dict[str, str] | None = None) -> DecodePlan:
    """The decoding plan of ``g``; ``runtime``: the dims the module reads at each call;
    ``fixed_by``: why the others are fixed (codegen/torch/sizes.py)."""
    n = seq_dim(g)
    if n is None:
        return DecodePlan(None, reason="the entry's first input has no sequence axis (expected [B, N, ...])")
    if n.name not in runtime:
        why = (fixed_by or {}).get(n.name, "given to load, or a weight's shape uses it")
        return DecodePlan(n.name, reason=f"the module fixes {n.name} ({why}); decoding reads {n.name} from the "
                                         f"inputs, one position at a time")
    if len(g.inputs) != 1:
        why = f"{_where(g.inputs[1])}decoding feeds one input a position at a time; the entry takes " \
              f"{len(g.inputs)} ({', '.join(i.name for i in g.inputs)})"
        shared = [i.name for i in g.inputs[1:] if i.out.rank >= 2 and sympy.sympify(i.out.shape[1]) == n]
        if shared:          # one length for every input: a new position lengthens them all
            why += f", and {', '.join(shared)} run over the same {n}"
        later = nx.descendants(g.nx, g.inputs[-1].id)       # the layers of the last input (a decoder's)
        whole = [i for i in later if g.node(i).kind in (OpKind.MOE, OpKind.FIXED_POINT)]   # bodies over every token
        layer = _layers(g, n, set(sorted(whole)[:1]) or later).reason
        return DecodePlan(n.name, reason=why + (f"; besides, {layer}" if layer else ""))
    return _layers(g, n)


def _layers(g: Graph, n: sympy.Symbol, only: set[int] | None = None) -> DecodePlan:
    """The plan of ``g``'s layers along ``n`` (the entry's inputs already checked); ``only``:
    the nodes to look at (all by default)."""
    slots, positional = [], set()
    win = W.windows(g, n)
    tables = prefix_tables(g, n)          # factorised position tables: built whole, their rows read
    try:
        for node in g.nodes():
            if only is not None and node.id not in only:
                continue
            if node.id in win.slices:
                slots.append(Slot(node.name, "window", "batch" if win.slices[node.id].batched else "shared"))
                continue
            if node.id in win.rerun:
                why = W.rerun_refusal(g, node, n)
                if why is not None:
                    raise _refuse(node, why)
                kind = _runtime_kind(node)
                if kind is not None:
                    slots.append(Slot(node.name, kind, "rerun"))
                continue
            if W.window_queries(g, node, win):
                why = W.window_mix_refusal(g, node, n, win)
                if why is not None:
                    raise _refuse(node, why)
                slots.append(Slot(node.name, "softmax", "window"))
                continue
            if node.id in tables.nodes:
                if node.id in tables.ends:
                    positional.add(node.id)          # its rows: from the token's position in a step
                continue
            kind = _classify(g, node, n)
            if kind in STATEFUL:
                slots.append(Slot(node.name, kind, _detail(g, node, n)))
            elif kind == "positional":
                positional.add(node.id)
        for p in g.outputs:
            t = g.type_of(p)
            if not _axes(t.shape, n) and not W.output_ok(t.shape, n, win):
                raise _refuse(g.node(p.node), f"the output {t} has no {n} axis: nothing to generate")
    except _Refuse as why:
        return DecodePlan(n.name, reason=str(why))
    return DecodePlan(n.name, tuple(slots), frozenset(positional), win)


def _runtime_kind(node: Node) -> str | None:
    """The stateful runtime a node's generated call goes through (None: a plain call)."""
    if node.kind == OpKind.MIX:
        return {"softmax": "softmax", "content_sparse": "softmax", "linear": "linear",
                "decayed_linear": "linear", "toeplitz": "toeplitz"}.get(node.spec.family)
    return {OpKind.CONV1D: "conv1d", OpKind.RECURRENT: "recurrent"}.get(node.kind)


def _detail(g: Graph, node: Node, n: sympy.Symbol) -> str:
    if node.kind != OpKind.MIX:
        return ""
    t = next((x for x in M.mask_leaves(node.spec.mask) if isinstance(x, M.Toeplitz)), None)
    if t is not None and isinstance(t.kernel, M.ExplicitKernel):
        length = g.type_of(node.input(t.kernel.kernel.role)).shape[0]
        return "lag" if sympy.sympify(length) == n else ""
    return ""


def _classify(g: Graph, node: Node, n: sympy.Symbol) -> str:
    """'none', 'positional' or a STATEFUL family; raises _Refuse."""
    ins = [g.type_of(p) for p in node.inputs]
    outs = list(node.outs)
    for t in ins + outs:
        for d in t.shape:
            d = sympy.sympify(d)
            if _uses(d, n) and _prefix(d, n) is None:
                raise _refuse(node, f"an axis of size {d} depends on the sequence length {n}")
    on_seq = any(_axes(t.shape, n) for t in ins + outs)
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
    axis_last = x is not None and x.rank - 1 in _axes(x.shape, n)
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
        if axis in _axes(x.shape, n):
            raise _refuse(node, f"{node.attr('fn') or 'softmax'} over the {n} axis reads every position")
        return "none"
    if k == OpKind.MATMUL:
        a, b = ins[0], ins[1]
        if a.rank - 1 in _axes(a.shape, n) or (b.rank >= 2 and b.rank - 2 in _axes(b.shape, n)):
            raise _refuse(node, f"a matrix product that sums over the {n} axis")
        return "none"
    if k == OpKind.REARRANGE:
        if not _axes(x.shape, n) and len(_axes(node.out.shape, n)) == 1 and node.attr("expand") is not None:
            return "none"                       # broadcast along N: the same at every position
        if len(_axes(x.shape, n)) != 1 or len(_axes(node.out.shape, n)) != 1:
            raise _refuse(node, f"reshapes the {n} axis")
        return "none"
    if k == OpKind.SLICE:
        return _slice(node, x, n)
    if k == OpKind.CONCAT:
        axis = node.attr("axis") % node.out.rank
        if _PREFIXED and axis in _axes(node.out.shape, n) and not any(_uses(t.shape[axis], n) for t in ins[:-1]):
            return "none"                     # memory before the segment: a prefix every position sees
        if axis in _axes(node.out.shape, n):
            raise _refuse(node, f"concatenates along the {n} axis (tokens before the sequence)")
        return "none"
    if k == OpKind.CONV1D:
        if not node.attr("causal"):
            raise _refuse(node, "a centred (non-causal) convolution reads later positions")
        return "conv1d"
    if k == OpKind.MIX:
        return _mix(g, node, n)
    if k == OpKind.RECURRENT and not _PREFIXED:
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
    global _PREFIXED
    body: Graph = node.attr("body")
    s = sympy.sympify(node.attr("segment"))
    if not s.is_Symbol or sympy.sympify(body.inputs[0].out.shape[-2]) != s:
        raise _refuse(node, f"the step's input is not laid out [.., {s}, D]")
    out = body.outputs[0]
    keep = nx.ancestors(body.nx, out.node) | {out.node}
    _PREFIXED = True
    try:
        for b in body.nodes():      # positions and taps inside restart with each segment, in a re-run too
            if b.id in keep and b.kind != OpKind.INPUT:
                _classify(body, b, s)
        if sympy.sympify(body.type_of(out).shape[-2]) != s:
            raise _refuse(node, "the step's output is not one row per position of the segment")
    except _Refuse as why:
        raise _Refuse(f"{_where(node)}{node.name} (recurrent): its step: {why}") from None
    finally:
        _PREFIXED = False
    return "recurrent"


def _slice(node: Node, x, n: sympy.Symbol) -> str:
    shape = iter(x.shape)
    for item in node.attr("index"):
        if item[0] == "new":
            continue
        d = sympy.sympify(next(shape))
        if _prefix(d, n) is not None and d != n:
            raise _refuse(node, f"takes part of the {d} axis")
        if d != n:
            if item[0] == "slice" and _uses(item[2], n):      # x[:N] of a longer table: rows 0 … N−1
                raise _refuse(node, f"takes the first {n} rows of an axis of {d} (a step would read row 0)")
            continue
        if item[0] == "index" or sympy.sympify(item[1]) != 0 or sympy.simplify(sympy.sympify(item[2]) - n) != 0:
            raise _refuse(node, f"takes part of the {n} axis (which positions depends on the length)")
    return "none"


def _mix(g: Graph, node: Node, n: sympy.Symbol) -> str:
    spec = node.spec
    prefix = {}
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is not None:
            prefix[role] = _prefix(g.type_of(p).shape[-2], n)
            if prefix[role] is None:
                raise _refuse(node, f"its {role} runs over {g.type_of(p).shape[-2]}, not over the sequence {n}")
    offset = sympy.simplify(prefix.get("k", 0) - prefix.get("q", 0))    # keys before the queries' first
    if not spec.causal:
        raise _refuse(node, f"the mask {spec.mask} lets a position see later ones (not causal)")
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


def seq_flag(p: DecodePlan | None, nid: int) -> str:
    """``, seq=True`` for a node that reads the absolute position (it starts at t in a step)."""
    return ", seq=True" if p is not None and nid in p.positional else ""


def window_line(w, node: Node) -> None:
    """The line of a window slice ``x[:, N - M:]`` becomes ``rt.last_rows(x, axis, M)``: the
    same rows outside decoding, a window slot in prefill / step. Run after the layer's hooks:
    a line they rewrote (sequence parallelism's ``rt.seq_take``) is kept as the call's
    ``rows``, what it runs outside decoding."""
    p = w.decoding
    if p is None or p.windows is None or node.id not in p.windows.slices:
        return
    win = p.windows.slices[node.id]
    head = f"        {w.var[(node.id, 0)]} = "
    for i in range(len(w.body) - 1, -1, -1):
        if w.body[i].startswith(head):
            expr, sep, note = w.body[i][len(head):].partition("  # ")
            rows = f", lambda: {expr}" if expr.startswith("rt.") else ""     # a hook's form, kept outside decoding
            w.body[i] = f"{head}rt.last_rows({w.inp(node, 'x')}, {win.axis}, {w.sizes.code(win.size)}{rows}){sep}{note}"
            return
    raise RuntimeError(f"decoding: no line assigns the window slice {node.name}")


def class_lines(p: DecodePlan, refusal: str | None = None) -> list[str]:
    """The ``DECODE`` attribute of the entry class: the reason it cannot decode (``refusal``:
    the backend's), or the sequence dim and each stateful call in call order (path, family,
    detail)."""
    from codegen.source import literal

    if not p.ok or refusal:
        return [f"    DECODE = {literal(p.reason or refusal)}   # why prefill / step refuse"]
    lines = [f"    DECODE = ({literal(p.seq)}, (   # prefill / step: the sequence dim; each stateful call, in order"]
    lines += [f"        ({literal(s.path)}, {literal(s.kind)}, {literal(s.detail)})," for s in p.slots]
    return lines + ["    ))"]
