"""Which layers of a generated module can run with the sequence split over ranks.

Read from the IR, as ``codegen/torch/packing.py`` reads it for packed rows, whose rules
this reuses: a layer that reads across the sequence axis of a *sharded* tensor is
refused unless it has a distributed form. A tensor is sharded when it derives from an
entry input along the sequence axis (the axes of packed rows: axis 1 of ``tokens: [B, N]``,
−2 of ``x: [B, .., N, D]``); everything else (weights, a filter or a position table over
the whole length) is computed whole on every rank, with the global N, and needs nothing.

Where packed rows and sequence parallelism differ:

- mixers over the sequence: every structural mask is served (ring attention evaluates it
  at global positions, absolute or not); content-based masks and given scores are refused;
- positions and the length as a number: global N makes them right (a Hyena filter over N
  taps, ``x / N``), so they need nothing;
- rows read whole (``_states``): a slice of the sequence whose length does not depend on N
  (global tokens ``x[:, :G]``, a [CLS] row ``x[:, 0]``, the last positions) is *replicated*
  (``rt.seq_take``: gathered from its owners); what is computed from replicated tensors
  only stays replicated (a mixer on them runs on one process: ``rt.seq_local``); a softmax
  mixer with replicated queries and sharded keys merges the ranks' partial results
  (``rt.seq_replicated_queries``); a slice whose length depends on N (``x[:, G:]``) is a
  sharded *part* (``rt.seq_part``) that only a concat completing the sequence may read
  (``rt.seq_concat``: the replicated rows land on the ranks owning their positions); a
  replicated output of the entry counts 1/P of its gradient on each rank
  (``rt.seq_output``). The runtime side: ``codegen/distributed/rows.py``.

The writer puts ``rt.unsharded(path, why)`` ahead of a refused layer; it raises only inside a
``sequence_parallel`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sympy

from codegen.source import literal
from codegen.torch import packing
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind

_DATA_MASKS = tuple(c for c in (getattr(M, "Buckets", None), getattr(M, "BlockMap", None),
                                getattr(M, "Document", None)) if c is not None)


SHARD, REPL = "sharded", "replicated"


def _n_item(g: Graph, node: Node, n):
    """(axis of x, index item) of a slice's item on the sequence axis, or None."""
    shape = iter(g.type_of(node.input("x")).shape)
    axis = -1
    for item in node.attr("index"):
        if item[0] == "new":
            continue
        axis += 1
        if sympy.sympify(next(shape)) == n:
            return axis, item
    return None


def _slice_state(g: Graph, node: Node, n):
    """A slice of a sharded tensor: still sharded (the whole N axis), replicated (a range whose
    length does not depend on N: global tokens, a [CLS] row, the last positions) or a part
    ('part', lo, hi) that stays sharded (a range of length depending on N)."""
    found = _n_item(g, node, n)
    if found is None:
        return SHARD
    _, item = found
    if item[0] == "index":
        return REPL
    lo, hi = sympy.sympify(item[1]), sympy.sympify(item[2])
    if lo == 0 and sympy.simplify(hi - n) == 0:
        return SHARD
    return REPL if not packing._uses(sympy.simplify(hi - lo), n) else ("part", lo, hi)


def _concat_spec(g: Graph, node: Node, states: dict, n):
    """The pieces of a concat along N that cover [0, N): replicated ones (placed at their
    output rows) and sharded parts whose output rows are their own positions; None otherwise."""
    axis = node.attr("axis") % node.out.rank
    if sympy.sympify(node.out.shape[axis]) != n:
        return None
    spec, off = [], sympy.Integer(0)
    for p in node.inputs:
        st, size = states.get(p.node), sympy.sympify(g.type_of(p).shape[axis])
        if st == REPL:
            spec.append((REPL, off, None))
        elif isinstance(st, tuple) and sympy.simplify(st[1] - off) == 0:
            spec.append(("part", st[1], st[2]))
        else:
            return None
        off = sympy.simplify(off + size)
    return spec if sympy.simplify(off - n) == 0 else None


def _states(g: Graph, n) -> dict:
    """Node id → how its output lies over the ranks: SHARD, REPL or ('part', lo, hi); nodes not
    derived from an entry input along ``n`` are absent (computed whole on every rank)."""
    out: dict = {}
    for node in g.nodes():
        if node.kind == OpKind.INPUT:
            if any(sympy.sympify(d) == n for t in node.outs for d in t.shape):
                out[node.id] = SHARD
            continue
        ins = [out.get(p.node) for p in node.inputs]
        if not any(s is not None for s in ins):
            continue
        if any(isinstance(s, tuple) for s in ins) and node.kind != OpKind.CONCAT:
            out[node.id] = SHARD                # a part read by anything but a concat: refused
        elif node.kind == OpKind.SLICE and ins[0] == SHARD:
            out[node.id] = _slice_state(g, node, n)
        elif node.kind == OpKind.CONCAT and not all(s in (None, REPL) for s in ins):
            out[node.id] = SHARD                # along N (a completing concat: honoured) or of sharded pieces
        elif node.kind == OpKind.MIX:
            q = node.input("q")
            out[node.id] = REPL if q is not None and out.get(q.node) == REPL else SHARD
        else:
            out[node.id] = REPL if all(s in (None, REPL) for s in ins) else SHARD
    return out


def _mix(g: Graph, node: Node, b, n) -> tuple[str, str]:
    fam = node.spec.family
    if fam == "synthetic":
        return "refuse", "given scores over the whole sequence"
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is None:
            continue
        t = g.type_of(p)
        if t.rank < 2 or sympy.sympify(t.shape[-2]) != n:
            return "refuse", f"its {role} {t} is not laid out [.., {n}, ..] (a mixer over another sequence)"
    what, why = _mix_masks(node)
    return (what, why) if what == "refuse" else ("honour", "a distributed algorithm (codegen/distributed)")


def _mix_masks(node: Node) -> tuple[str, str]:
    for leaf in M.mask_leaves(node.spec.mask):
        if _DATA_MASKS and isinstance(leaf, _DATA_MASKS):
            return "refuse", f"{leaf}: a mask computed from the data of other ranks' positions"
    return "none", ""


def classify(g: Graph, node: Node, fr, states: dict) -> tuple[str, str]:
    """('none' | 'honour' | 'refuse' | 'local', why) for one node."""
    st = states.get(node.id)
    if st is None or node.kind == OpKind.INPUT:
        return "none", ""
    b, n = fr
    ins = [states.get(p.node) for p in node.inputs]
    if node.kind == OpKind.SLICE and ins[0] == SHARD and st != SHARD:
        return "honour", "rows of the split sequence (codegen/distributed/rows.py)"
    if node.kind == OpKind.CONCAT and node.out.rank and _concat_spec(g, node, states, n) is not None:
        return "honour", "a concat that completes the split sequence (codegen/distributed/rows.py)"
    if st == REPL and all(s in (None, REPL) for s in ins):
        if node.kind == OpKind.MIX or node.kind == OpKind.CONV1D or (
                node.kind == OpKind.UNARY and node.attr("fn") == "rotary"):
            return "local", "replicated on every rank: the one-process runtime"
        return "none", ""
    if node.kind == OpKind.MIX and st == REPL:
        if node.spec.family != "softmax":
            return "refuse", f"replicated queries over sharded keys ({node.spec.family} family): softmax only"
        if any(states.get(node.input(r).node) != SHARD for r in ("k", "v") if node.input(r) is not None):
            return "refuse", "replicated queries need keys and values along the split sequence"
        what, why = _mix_masks(node)
        return (what, why) if what == "refuse" else ("honour", "replicated queries: an LSE all-reduce (rows.py)")
    if node.kind == OpKind.MIX:
        return _mix(g, node, b, n)
    what, why = packing.classify(g, node, fr)
    if what != "refuse":
        return what, why
    if node.kind == OpKind.BINARY and packing._uses(node.attr("scalar"), n):
        return "none", ""                     # the global N
    return "refuse", why


class Plan:
    def __init__(self, fr):
        self.frame = fr
        self._states: dict[int, dict] = {}     # graph → node id → SHARD | REPL | ('part', lo, hi)
        self._cache: dict[tuple[int, int], tuple[str, str]] = {}

    def of(self, g: Graph, node: Node) -> tuple[str, str]:
        if self.frame is None:
            return "none", ""
        key = (id(g), node.id)
        if key not in self._cache:
            if id(g) not in self._states:
                self._states[id(g)] = _states(g, self.frame[1])
            self._cache[key] = classify(g, node, self.frame, self._states[id(g)])
        return self._cache[key]


def _plan(w) -> Plan:
    plan = getattr(w, "sp_plan", None)
    if plan is None:
        plan = w.sp_plan = Plan(packing.plan_of(w).frame)      # the entry's axes, as for packed rows
    return plan


def _whole_operands(w, plan: Plan, n: Node) -> list[tuple[tuple[int, int], int]]:
    """The operands of an elementwise op on a sharded tensor that are computed whole over the
    sequence (a table over N: RetNet's rotation written in the file): (var key, their N axis)."""
    if n.kind != OpKind.BINARY or plan.frame is None:
        return []
    sharded = plan._states.get(id(w.g), {})
    if sharded.get(n.id) != SHARD:
        return []
    seq = plan.frame[1]
    out = []
    for p in n.inputs:
        if p.node in sharded:
            continue
        src = w.g.node(p.node)
        if src.kind in (OpKind.PARAM, OpKind.BUFFER, OpKind.POSITIONS) and packing.plan_of(w).honours(w.g, src):
            continue                            # read through rt.by_position already
        axes = [i for i, d in enumerate(w.g.type_of(p).shape) if sympy.sympify(d) == seq]
        if len(axes) == 1:
            out.append(((p.node, p.index), axes[0]))
    return out


def before(w, n: Node) -> None:
    """A refusal line ahead of a layer that cannot run on a split sequence; an operand computed
    whole over the sequence read at this rank's rows (``rt.local_rows``) by an op on a
    sharded tensor."""
    plan = _plan(w)
    what, why = plan.of(w.g, n)
    if what == "refuse":
        w.body.append(f"        rt.unsharded({literal(w.rel(n.name))}, {literal(why)})  "
                      "# sequence parallelism: refused here")
    saved = []
    for key, axis in _whole_operands(w, plan, n):
        saved.append((key, w.var[key]))
        w.var[key] = f"rt.local_rows({w.var[key]}, {axis})"
    w.sp_saved = saved
    w.sp_start = len(w.body)


@contextlib.contextmanager
def layer_hooks(w, n: Node) -> Iterator[None]:
    """What the writer puts around one layer's line: packed rows' refusals and position reads
    (codegen/torch/packing.py), then this module's."""
    packing.before(w, n)
    before(w, n)
    yield
    after(w, n)
    packing.after(w, n)


def after(w, n: Node) -> None:
    """Undo ``before``'s operand rewrite (other readers see the whole tensor); the layer's line
    rewritten where it reads rows of the split sequence whole (``rows.py``)."""
    for key, text in getattr(w, "sp_saved", []):
        w.var[key] = text
    w.sp_saved = []
    plan = _plan(w)
    what, _ = plan.of(w.g, n)
    if what in ("honour", "local") and n.kind in (OpKind.SLICE, OpKind.CONCAT, OpKind.MIX, OpKind.CONV1D,
                                                   OpKind.UNARY):
        states = plan._states[id(w.g)]
        if what == "local":
            _rewrite(w, n, lambda e: f"rt.seq_local(lambda: {e})")
        elif n.kind == OpKind.MIX and states.get(n.id) == REPL:
            _rewrite(w, n, lambda e: f"rt.seq_replicated_queries(lambda: {e})")
        elif n.kind == OpKind.SLICE:
            _rewrite(w, n, lambda e: _slice_expr(w, n, states))
        elif n.kind == OpKind.CONCAT:
            _rewrite(w, n, lambda e: _concat_expr(w, n, states))
    if plan.frame is not None and (n.id, 0) in w.var and plan._states.get(id(w.g), {}).get(n.id) == REPL \
            and any(p.node == n.id for p in w.g.outputs):
        var = w.var[(n.id, 0)]
        w.body.append(f"        {var} = rt.seq_output({var})  # replicated on every rank: each rank's loss counts 1/P")


def _rewrite(w, n: Node, fn) -> None:
    """Replace the expression of the line that assigns ``n``'s output (written since ``before``)."""
    var = w.var.get((n.id, 0))
    head = f"        {var} = "
    for i in range(len(w.body) - 1, getattr(w, "sp_start", 0) - 1, -1):
        line = w.body[i]
        if var is not None and line.startswith(head):
            expr, sep, note = line[len(head):].partition("  # ")
            w.body[i] = head + fn(expr) + sep + note
            return
    w.body.append(f"        rt.unsharded({literal(w.rel(n.name))}, "   # a line of another form: refused
                  f"{literal('its generated call has no sequence-parallel form')})  # sequence parallelism")


def _slice_expr(w, n: Node, states: dict) -> str:
    """``rt.seq_take`` / ``rt.seq_part`` of the sliced tensor, then the slice of the other axes."""
    seq = _plan(w).frame[1]
    axis, item = _n_item(w.g, n, seq)
    st = states[n.id]
    x = w.inp(n, "x")
    if item[0] == "index":
        head = f"rt.seq_take({x}, {axis}, {w.sizes.code(item[1])}, None)"
    else:
        fn = "rt.seq_take" if st == REPL else "rt.seq_part"
        head = f"{fn}({x}, {axis}, {w.sizes.code(item[1])}, {w.sizes.code(item[2])})"
    parts, shape = [], iter(w.g.type_of(n.input("x")).shape)
    for it in n.attr("index"):
        if it[0] == "new":
            parts.append("None")
            continue
        d = sympy.sympify(next(shape))
        if d == seq:
            parts.append("0" if it[0] == "index" else ":")
        elif it[0] == "index":
            parts.append(w.sizes.code(it[1]))
        elif sympy.sympify(it[1]) == 0 and sympy.simplify(sympy.sympify(it[2]) - d) == 0:
            parts.append(":")
        else:
            lo = "" if sympy.sympify(it[1]) == 0 else w.sizes.code(it[1])
            parts.append(f"{lo}:{w.sizes.code(it[2])}")
    while parts and parts[-1] == ":":
        parts.pop()
    return f"{head}[{', '.join(parts)}]" if parts else head


def _concat_expr(w, n: Node, states: dict) -> str:
    spec = _concat_spec(w.g, n, states, _plan(w).frame[1])
    items = ", ".join(w.ref(p) for p in n.inputs)
    text = ", ".join(f"({literal(k)}, {w.sizes.code(a)}, {'None' if b is None else w.sizes.code(b)})"
                     for k, a, b in spec)
    return f"rt.seq_concat([{items}], {n.attr('axis')}, ({text},))"
