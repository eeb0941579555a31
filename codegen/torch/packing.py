"""Packed rows in the generated module: which layers honour document boundaries, and how.

Read from the IR alone, never per model. The packed axes are those of the entry's first
input: ``tokens: int[B, N]`` (rank 2: axes 0 and 1) or ``x: [B, .., N, D]`` (batch first,
sequence second to last). The entry's ``forward(..., doc_ids=None)`` makes the documents
current for the call (``rt.packing``); then every node is, for packing:

- **none**: nothing to do (position-wise work: projections, norms over features,
  elementwise ops, embeddings; or no axis of the packed sequence at all);
- **honour**: a sequence mixer over the packed axes (``docs=rt.documents()``: softmax mixers
  add a ``Document`` mask term, linear and decayed ones reset their state, Toeplitz ones run
  per document), a short convolution along them (no history across a boundary), or a
  position-dependent op — ``arange(N)``, ``sinusoidal(N, D)``, rotary, a position table
  sliced to N — whose positions restart at every document;
- **refuse**: anything else that reads across the sequence (pooling, a reduction or
  softmax over N, a slice, concat or reshape of the sequence axis, a mixer over another
  length, batch norm, a learned projection along N, routing with a capacity, a fixed-point
  or segment loop): the generated line ``rt.unpacked(path, why)`` raises, naming the layer,
  when the call is packed; unpacked calls are unaffected.
"""

from __future__ import annotations

import ast

import sympy

from codegen.source import literal
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind

_POSITION_WISE = {OpKind.LINEAR, OpKind.MLP, OpKind.HASH}
_ELEMENTWISE = {OpKind.UNARY, OpKind.BINARY, OpKind.DROPOUT, OpKind.GET, OpKind.EMBED, OpKind.INPUT, OpKind.OUTPUT}


def frame(g: Graph) -> tuple[sympy.Symbol, sympy.Symbol] | None:
    """(batch, sequence) dims of the entry's first input; None when it has no such axes."""
    if not g.inputs or g.inputs[0].out.rank < 2:
        return None
    shape = g.inputs[0].out.shape
    b, n = sympy.sympify(shape[0]), sympy.sympify(shape[1] if len(shape) == 2 else shape[-2])
    return (b, n) if b.is_Symbol and n.is_Symbol and b != n else None


def seq_axis(g: Graph) -> int:
    """The axis of the entry's first input that ``doc_ids`` numbers (1 or −2)."""
    return 1 if g.inputs[0].out.rank == 2 else -2


def _axes(shape, n) -> list[int]:
    return [i for i, d in enumerate(shape) if sympy.sympify(d) == n]


def _uses(expr, n) -> bool:
    return expr is not None and n in sympy.sympify(expr).free_symbols


def classify(g: Graph, node: Node, fr: tuple[sympy.Symbol, sympy.Symbol]) -> tuple[str, str]:
    """('none' | 'honour' | 'refuse', why) for one node."""
    b, n = fr
    ins = [g.type_of(p) for p in node.inputs]
    k = node.kind
    for t in ins + list(node.outs):
        for d in t.shape:
            d = sympy.sympify(d)
            if d != n and _uses(d, n):
                return "refuse", f"an axis of size {d} depends on the sequence length {n}"
    on_seq = any(_axes(t.shape, n) for t in ins + list(node.outs))
    if k in (OpKind.PARAM, OpKind.BUFFER) or (k == OpKind.POSITIONS and _uses(node.out.shape[0], n)):
        if not on_seq:
            return "none", ""
        return _positions(g, node, b, n)
    if k == OpKind.POSITIONS:
        return "none", ""
    if not on_seq:
        return "none", ""
    if k == OpKind.BINARY and _uses(node.attr("scalar"), n):
        return "refuse", f"uses the length {n} as a number"
    if k in _ELEMENTWISE:
        if k == OpKind.UNARY and node.attr("fn") == "rotary":
            return "honour", "rotary positions restart at every document"
        return "none", ""
    x = ins[0] if ins else None
    along = x is not None and x.rank - 1 in _axes(x.shape, n)
    if k in _POSITION_WISE:
        return ("refuse", f"acts along the {n} axis") if along else ("none", "")
    if k == OpKind.NORM:
        if node.attr("fn") == "batchnorm":
            return "refuse", "batch norm takes its statistics over every position of the batch"
        return ("refuse", f"normalises along the {n} axis") if along else ("none", "")
    if k in (OpKind.SOFTMAX, OpKind.REDUCE):
        if node.attr("axis") % x.rank in _axes(x.shape, n):
            return "refuse", f"{node.attr('fn') or 'softmax'} over the {n} axis reads every document of the row"
        return "none", ""
    if k == OpKind.MATMUL:
        a, c = ins[0], ins[1]
        if a.rank - 1 in _axes(a.shape, n) or (c.rank >= 2 and c.rank - 2 in _axes(c.shape, n)):
            return "refuse", f"a matrix product that sums over the {n} axis"
        return "none", ""
    if k == OpKind.REARRANGE:
        if len(_axes(x.shape, n)) != 1 or len(_axes(node.out.shape, n)) != 1:
            return "refuse", f"reshapes the {n} axis"
        return "none", ""
    if k == OpKind.SLICE:
        return _slice(node, x, n)
    if k == OpKind.CONCAT:
        if node.attr("axis") % node.out.rank in _axes(node.out.shape, n):
            return "refuse", f"concatenates along the {n} axis"
        return "none", ""
    if k == OpKind.CONV1D:
        return _batch_first(x, b, n, "convolution")
    if k == OpKind.MIX:
        return _mix(g, node, b, n)
    why = {
        OpKind.POOL: f"pools windows of the {n} axis across documents",
        OpKind.SEQ_PROJECT: f"a learned projection along {n} mixes every position",
        OpKind.SORT_BLOCKS: "sorts blocks of the whole row",
        OpKind.MOE: "routes with a capacity shared by every token of the batch",
        OpKind.FIXED_POINT: "its stopping test reads the whole row",
        OpKind.RECURRENT: "runs segment by segment over the whole row",
    }.get(k, f"no packing rule for {k.value}")
    return "refuse", why


def _positions(g: Graph, node: Node, b, n) -> tuple[str, str]:
    """A table over positions [N, …] (arange, sinusoidal, a learned table sliced to N) becomes
    [B, N, …] rows by position inside each document: honoured where every reader adds or
    multiplies it straight into a [B, N, …] activation (right-aligned), refused otherwise."""
    t = node.out
    if _lags_only(g, node, b, set()):
        return "none", "the lag axis of a convolution kernel (K[i − j]), not token positions"
    if sympy.sympify(t.shape[0]) != n:
        return "refuse", f"a table whose {n} axis is not its first"
    for r in g.nodes():
        if not any(p.node == node.id for p in r.inputs):
            continue
        out = r.out
        if r.kind != OpKind.BINARY or out.rank != t.rank + 1 or sympy.sympify(out.shape[0]) != b \
                or sympy.sympify(out.shape[1]) != n:
            return "refuse", (f"positions over {n} read by {r.name} ({r.kind.value}), not added to a "
                              f"[{b}, {n}, ..] activation: they cannot restart at every document there")
    return "honour", "positions restart at every document"


def _lags_only(g: Graph, node: Node, b, seen: set[int]) -> bool:
    """Whether ``node``'s table reaches the activations only as the kernel of Toeplitz mixes
    (Hyena's implicit filter from arange(N), a learned long-convolution filter [N, C]): its N
    axis is then the lag i − j, the same in every document, and the table stays as it is."""
    if node.id in seen:
        return True
    seen.add(node.id)
    found = False
    for r in g.nodes():
        ports = [p for p in r.inputs if p.node == node.id]
        if not ports:
            continue
        found = True
        if r.kind == OpKind.MIX:
            kernels = {leaf.kernel.kernel.role for leaf in M.mask_leaves(r.spec.mask)
                       if isinstance(leaf, M.Toeplitz) and isinstance(leaf.kernel, M.ExplicitKernel)}
            if any(p.role not in kernels for p in ports):
                return False
        elif any(sympy.sympify(d) == b for t in r.outs for d in t.shape) or r.kind == OpKind.OUTPUT \
                or not _lags_only(g, r, b, seen):
            return False
    return found


def _batch_first(x, b, n, what: str) -> tuple[str, str]:
    if x is not None and x.rank >= 3 and sympy.sympify(x.shape[0]) == b and sympy.sympify(x.shape[-2]) == n:
        return "honour", f"the {what} restarts at every document"
    return "refuse", f"a {what} over {x}, not laid out [{b}, .., {n}, ..]"


def _slice(node: Node, x, n) -> tuple[str, str]:
    shape = iter(x.shape)
    for item in node.attr("index"):
        if item[0] == "new":
            continue
        d = sympy.sympify(next(shape))
        if d != n:
            continue
        if item[0] == "index" or sympy.sympify(item[1]) != 0 or sympy.simplify(sympy.sympify(item[2]) - n) != 0:
            return "refuse", f"takes part of the {n} axis (positions of the whole row)"
    return "none", ""


def _mix(g: Graph, node: Node, b, n) -> tuple[str, str]:
    if node.spec.family == "synthetic":
        return "refuse", "given scores over the whole row"
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is None:
            continue
        t = g.type_of(p)
        if t.rank < 3 or sympy.sympify(t.shape[-2]) != n or sympy.sympify(t.shape[0]) != b:
            return "refuse", f"its {role} {t} is not laid out [{b}, .., {n}, ..] (a mixer over another sequence)"
    for leaf in M.mask_leaves(node.spec.mask):
        for f in ("size", "block", "stride", "count", "start", "stop"):
            if _uses(getattr(leaf, f, None), n):
                return "refuse", f"{leaf}: the mask depends on the row's length {n}"
        absolute = (M.RandomBlocks, M.BlockMap, M.Global, M.KeyRange, M.QueryRange, M.Butterfly, M.Local)
        if isinstance(leaf, absolute) or (isinstance(leaf, M.Window) and leaf.block != 1):
            return "refuse", f"{leaf}: the mask is laid out on the row's absolute positions"
    return "honour", "document boundaries: " + (
        "a document mask" if node.spec.family in ("softmax", "content_sparse") else
        "state resets" if node.spec.family in ("linear", "decayed_linear") else "per-document convolution")


class Plan:
    """The packing class of every node of a graph (and of the graphs of its bodies)."""

    def __init__(self, fr: tuple[sympy.Symbol, sympy.Symbol] | None):
        self.frame = fr
        self._cache: dict[tuple[int, int], tuple[str, str]] = {}

    def of(self, g: Graph, node: Node) -> tuple[str, str]:
        if self.frame is None:
            return "none", ""
        key = (id(g), node.id)
        if key not in self._cache:
            self._cache[key] = classify(g, node, self.frame)
        return self._cache[key]

    def honours(self, g: Graph, node: Node) -> bool:
        return self.of(g, node)[0] == "honour"


# ---- the writer's side ------------------------------------------------------------------------


def plan_of(w) -> Plan:
    """The writer's plan (made from its graph, the entry's, on first use; children share it)."""
    plan = getattr(w, "packing_plan", None)
    if plan is None:
        plan = w.packing_plan = Plan(frame(w.g))
    return plan


def before(w, n: Node) -> None:
    """A refusal line ahead of a layer that cannot honour document boundaries."""
    what, why = plan_of(w).of(w.g, n)
    if what == "refuse":
        w.body.append(f"        rt.unpacked({literal(w.rel(n.name))}, {literal(why)})  # packed rows: refused here")


def after(w, n: Node) -> None:
    """A position table read by the positions inside each document."""
    if n.kind in (OpKind.PARAM, OpKind.BUFFER) and plan_of(w).honours(w.g, n):
        w.var[(n.id, 0)] = f"rt.by_position({w.var[(n.id, 0)]}, rt.documents())"


def rewrite(w, n: Node, expr: str) -> str:
    """The line of a layer that honours document boundaries."""
    if not plan_of(w).honours(w.g, n):
        return expr
    if n.kind == OpKind.POSITIONS:
        return f"rt.by_position({expr}, rt.documents())"
    if n.kind == OpKind.UNARY:          # rotary
        return f"rt.rotary_by_position({w.inp(n, 'x')}, {w.sizes.number(n.attr('fraction'))!r}, " \
               f"{w.sizes.number(n.attr('base'))!r}, rt.documents(){w._seq(n)})"   # seq: decoding's positions
    if n.kind == OpKind.CONV1D:
        return f"rt.conv1d_by_document({w.inp(n, 'x')}, {w.inp(n, 'weight')}, {w.inp(n, 'bias')}, " \
               f"causal={bool(n.attr('causal'))}, docs=rt.documents())"
    if n.kind == OpKind.MIX:
        if expr.startswith(_RUNTIME_MIXERS) and expr.endswith(")"):
            return expr[:-1] + ", docs=rt.documents())"
        wrapper = {"softmax": "rt.attention_by_document", "linear": "rt.linear_by_document",
                   "decayed_linear": "rt.linear_by_document", "toeplitz": "rt.toeplitz_by_document"}.get(n.spec.family)
        wrapped = _wrap_kernel_call(expr, wrapper) if wrapper else None
        if wrapped is not None:
            return wrapped
        # a generated kernel that cannot take the documents: packed calls are refused
        w.body.append(f"        rt.unpacked({literal(w.rel(n.name))}, "
                      f"{literal('a generated Triton kernel, without document boundaries (use the torch backend)')})"
                      "  # packed rows: refused here")
    return expr


def _wrap_kernel_call(expr: str, wrapper: str) -> str | None:
    """``mix_x(a, b, k=c) * s`` → ``wrapper(mix_x, a, b, k=c, docs=rt.documents()) * s``: the one
    call of a generated kernel function (``mix_…``) in the line, rewritten on its syntax tree
    (the line is generated text; None if there is not exactly one such call)."""
    tree = ast.parse(expr, mode="eval")
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
             and c.func.id.startswith("mix_")]
    if len(calls) != 1:
        return None
    call = calls[0]
    target = ast.parse(wrapper, mode="eval").body
    call.args = [call.func, *call.args]
    call.func = target
    call.keywords.append(ast.keyword("docs", ast.parse("rt.documents()", mode="eval").body))
    return ast.unparse(tree)


_RUNTIME_MIXERS = ("softmax_attention(", "given_attention(", "linear_attention(", "toeplitz_mix(")


def entry_forward(w, args: str) -> list[str]:
    """The entry's forward: ``doc_ids`` made current, then the body (``forward_rows``)."""
    fr = plan_of(w).frame
    if fr is None or not args:
        return [f"    def forward(self, {args}):"]
    first = args.split(",")[0].strip()
    axis = seq_axis(w.g)
    return [f"    def forward(self, {args}, *, doc_ids=None):",
            '        """``doc_ids`` (optional, the batch and sequence axes of the first input): packed rows, '
            'the document of every position (docs/modules.md)."""',
            f"        with rt.packing(doc_ids, {first}.shape[0], {first}.shape[{axis}]):",
            f"            return self.forward_rows({args})",
            "",
            f"    def forward_rows(self, {args}):"]
