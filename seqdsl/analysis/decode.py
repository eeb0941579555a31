"""Decoding cost: what one generated token costs once the prompt is in the state.

``seqdsl analyze complexity FILE --decode``. For every layer of the graph, the work of one
step (one new token appended to a context of N tokens) and the bytes of the state a
sequence carries between steps, both as formulas in N and the other sizes. Derived from
the IR only — the mask, decay, feature map and kernel of each MixSpec, the op kind and
attributes of every other node — never from a model's name:

- decayed / gated linear attention, selective scan, retention, kernel (feature-map)
  attention: a [F, Dv] state per head (F = Dk, or the feature count of φ), plus the
  normaliser's [F] for ``norm = sum``: O(1) in N;
- Toeplitz mixing by an SSM: the SSM state (complex where the kernel is: the conjugate half
  of a diagonal kernel, the dense S×S system of DPLR), the shift register of a shift SSM,
  Mega's real EMA state: O(1) in N; a short causal ``conv1d`` keeps its last width − 1 inputs;
- an explicit convolution kernel (implicit filters, long convolutions) keeps the input
  history: O(N) per token, stated;
- softmax: a key/value cache of every key the next query can see — N (causal), min(N, W)
  (``window(W)``, a ring buffer), the current block (``local(b)``); masks that let a
  query see later tokens (no causal term, bidirectional kernels), data-dependent block
  orders and ops that mix along the whole sequence (pooling, a sequence projection, a
  reduction or softmax over it) cannot decode, and the report says which layer and why.

Every other op runs on the new token alone: its step cost is the marginal cost of one
more position of its forward formula, f(N) − f(N − 1) (zero for work that does not depend
on N, e.g. a decay table computed once). Counting follows the forward report (a
multiply-add is 2 FLOPs, elements of 4 bytes, 2 for fp16/bf16 mixes; complex states
count two elements per entry).

For a model with softmax layers and other layers, the *crossover* is the context length
N* where the softmax layers' per-token cost (growing with N) overtakes all the rest:
the root of attention(N) = rest(N), solved with sympy, as a formula and at the sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from seqdsl.analysis import mixers
from seqdsl.analysis.decode_rules import entry_refusal, refusal, seq_dim
from seqdsl.analysis.ops import Context, op_estimates
from seqdsl.ir import decode_window as W
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind
from seqdsl.ir.tables import PrefixTables, prefix_tables

SKIP = (OpKind.INPUT, OpKind.PARAM, OpKind.BUFFER, OpKind.GET, OpKind.OUTPUT)
ZERO = sympy.Integer(0)


@dataclass(frozen=True)
class DecodeRow:
    """One layer's step: ``flops`` per generated token and ``state_bytes`` per batch, at a
    context of N tokens; ``state`` names what is kept. ``grows`` marks a softmax cache
    whose step cost grows with N (the "attention" side of the crossover)."""

    name: str
    op: str
    state: str
    flops: sympy.Expr
    state_bytes: sympy.Expr
    grows: bool = False
    refusal: str | None = None
    note: str = ""
    # bounds free of N mod C, for the leading term in N (None: the formula itself)
    flops_bound: sympy.Expr | None = None
    bytes_bound: sympy.Expr | None = None


@dataclass
class DecodeReport:
    rows: list[DecodeRow]
    n: sympy.Symbol | None
    sizes: dict = field(default_factory=dict)
    refusal: str | None = None      # the entry's own (its inputs or outputs), before any layer's

    @property
    def can_decode(self) -> tuple[bool, str]:
        """(True, "") or (False, the first layer that refuses and why)."""
        if self.refusal is not None:
            return False, self.refusal
        for r in self.rows:
            if r.refusal is not None:
                return False, f"{r.name}: {r.refusal}"
        return True, ""

    @property
    def flops(self) -> sympy.Expr:
        return sympy.expand(sum((r.flops for r in self.rows), ZERO))

    @property
    def state_bytes(self) -> sympy.Expr:
        return sympy.expand(sum((r.state_bytes for r in self.rows), ZERO))

    def bounds(self) -> tuple[sympy.Expr, sympy.Expr]:
        """(flops, state bytes) with every N mod C replaced by its bound: for big-O."""
        f = sum((r.flops if r.flops_bound is None else r.flops_bound for r in self.rows), ZERO)
        b = sum((r.state_bytes if r.bytes_bound is None else r.bytes_bound for r in self.rows), ZERO)
        return sympy.expand(f), sympy.expand(b)

    def crossover(self) -> dict | None:
        """The context length where the growing softmax caches' step cost equals the rest's.

        None when the model has no growing cache or nothing else. ``formula`` is sympy's
        root in the other sizes (None if it finds none in closed form), ``value`` the
        smallest positive root at the report's sizes (None when the softmax side never
        overtakes)."""
        attn = [r for r in self.rows if r.grows and r.refusal is None]
        rest = [r for r in self.rows if not r.grows and r.refusal is None]
        if not attn or not rest or self.n is None:
            return None
        a = sympy.expand(sum((r.flops for r in attn), ZERO))
        b = sympy.expand(sum((r.flops for r in rest), ZERO))
        n = self.n
        n = next((s for s in (a - b).free_symbols if s.name == n.name), n)   # the graph's own N
        formula = _positive_root(a - b, n)
        at_sizes = {s: self.sizes[s.name] for s in (a - b).free_symbols if s.name != n.name and s.name in self.sizes}
        value = _positive_root(sympy.expand((a - b).xreplace(at_sizes)), n)
        return {"attention_flops": a, "rest_flops": b, "formula": formula,
                "value": None if value is None else float(value),
                "layers": [r.name for r in attn]}


def _positive_root(expr: sympy.Expr, n: sympy.Symbol) -> sympy.Expr | None:
    """The root of ``expr`` in n that is positive (the smallest, if sympy can order them)."""
    x = sympy.Symbol(n.name, positive=True)   # a real unknown: the root need not be a whole number
    expr = expr.xreplace({n: x})
    expr = expr.rewrite(sympy.Piecewise) if expr.has(sympy.Min, sympy.Max) else expr
    try:
        roots = sympy.solve(sympy.Eq(expr, 0), x)
    except (NotImplementedError, TypeError, ValueError):
        return None
    good = []
    for r in roots:
        r = r[0] if isinstance(r, tuple) else r
        if r.is_positive is False or r.has(sympy.I):
            continue
        good.append(sympy.simplify(r).xreplace({x: n}))
    numbers = [r for r in good if r.is_number]
    if numbers:
        return min(numbers, key=float)
    return good[0] if good else None


# ---- one row per node --------------------------------------------------------------------

def _marginal(expr: sympy.Expr, n: sympy.Symbol | None) -> sympy.Expr:
    """f(N) − f(N − 1): the work one more position adds."""
    if n is None or not sympy.sympify(expr).has(n):
        return ZERO
    return sympy.expand(sympy.expand(expr) - sympy.expand(expr.xreplace({n: n - 1})))


def _stateless(g: Graph, node: Node, n, ctx: Context) -> DecodeRow:
    flops = _marginal(op_estimates(g, node, ctx).flops, n)
    return DecodeRow(node.name, node.kind.value, "-", flops, ZERO)


def node_row(g: Graph, node: Node, n: sympy.Symbol | None, ctx: Context, seq: sympy.Symbol,
             win: W.Windows | None = None, tables: PrefixTables | None = None) -> DecodeRow:
    """The decoding row of one node (any kind); ``seq`` is the entry's sequence dim; ``win``
    the graph's window slices (seqdsl/ir/decode_window.py), ``tables`` its factorised position
    tables (seqdsl/ir/tables.py)."""
    win = W.windows(g, seq) if win is None else win
    tables = prefix_tables(g, seq) if tables is None else tables
    why = refusal(g, node, seq, win=win, tables=tables)
    op = f"mix/{node.spec.family}" if node.kind == OpKind.MIX else node.kind.value
    if why is not None:
        return DecodeRow(node.name, op, "-", ZERO, ZERO, refusal=why)
    if node.id in tables.nodes and node.id not in tables.ends:   # computed whole at its built size (≥ N)
        return DecodeRow(node.name, op, "-", op_estimates(g, node, ctx).flops, ZERO)
    if node.id in win.slices or node.id in win.rerun or W.window_queries(g, node, win):
        return _window_row(g, node, n, ctx, win)
    if node.kind == OpKind.MIX:
        return mix_row(g, node, n)
    if node.kind == OpKind.CONV1D:   # causal (refused otherwise): the last width − 1 inputs
        x = g.type_of(node.input("x"))
        width = g.type_of(node.input("weight")).shape[-1]
        rows = sympy.Mul(*x.shape[:-2]) if x.rank > 2 else sympy.Integer(1)
        flops = rows * x.shape[-1] * (2 * width + (1 if node.input("bias") is not None else 0))
        return DecodeRow(node.name, op, f"last {width} - 1 inputs", flops, 4 * rows * x.shape[-1] * (width - 1))
    if node.kind == OpKind.RECURRENT:
        return _segment_row(g, node, ctx)
    return _stateless(g, node, n, ctx)


def _window_row(g: Graph, node: Node, n, ctx: Context, win: W.Windows) -> DecodeRow:
    """A suffix ``x[:, N − M:]`` keeps its last M − 1 input rows (a table without the batch axis
    once per sequence); a layer below it without an N axis re-runs whole on the M rows each
    step (its forward cost: O(M²) for an attention among them); a softmax whose queries are
    the M rows keeps a KV cache of every position and scores M queries against it."""
    op = f"mix/{node.spec.family}" if node.kind == OpKind.MIX else node.kind.value
    if node.id in win.slices:
        w = win.slices[node.id]
        x = g.type_of(node.input("x"))
        per_row = sympy.Mul(*[d for i, d in enumerate(x.shape) if i != w.axis])
        batch = sympy.Integer(1) if w.batched else sympy.sympify(g.inputs[0].out.shape[0])
        return DecodeRow(node.name, op, f"window: the last {w.size} - 1 rows", ZERO,
                         4 * batch * per_row * (w.size - 1))
    if node.id in win.rerun:
        if node.kind != OpKind.MIX:
            return DecodeRow(node.name, op, "-", op_estimates(g, node, ctx).flops, ZERO)
        flops = mixers.candidates(g, node, {})[0].forward.flops     # the plain (materialised) forward
        rows = g.type_of(node.input("v")).shape[-2]
        return DecodeRow(node.name, op, f"re-run on the last {rows} rows", flops, ZERO,
                         note=f"below a suffix of {rows} positions: its forward over them, each step")
    row = mix_row(g, node, n)
    nq = mixers.shapes_of(g, node).nq
    return DecodeRow(row.name, row.op, row.state, sympy.expand(row.flops * nq), row.state_bytes, grows=row.grows,
                     note=f"{nq} queries (the last {nq} positions) against the cache, each step")


def _segment_row(g: Graph, node: Node, ctx: Context) -> DecodeRow:
    """``recurrent(step, x, state, segment = S)``: the state carried from the last whole
    segment and the inputs of the segment begun (N mod S rows); a step re-runs the step on
    the segment so far (counted as a whole segment's work)."""
    x, state = g.type_of(node.input("x")), g.type_of(node.input("state"))
    seg = node.attr("segment")
    rows = sympy.Mul(*x.shape[:-2]) if x.rank > 2 else sympy.Integer(1)
    body = ctx.analyse_body(node.attr("body"))
    n = x.shape[-2]
    held = sympy.Mod(n, seg)            # rows of the segment begun, after N tokens
    return DecodeRow(node.name, node.kind.value, f"state {list(state.shape)} + the segment's rows",
                     body.flops, 4 * (state.numel() + rows * held * x.shape[-1]),
                     note=f"a step re-runs the step on the segment so far; counted as a whole segment of {seg} "
                          "(an upper bound)",
                     bytes_bound=4 * (state.numel() + rows * (seg - 1) * x.shape[-1]))


def mix_row(g: Graph, node: Node, n: sympy.Symbol | None) -> DecodeRow:
    """The step of one MIX node that decodes, by family (the module docstring lists the rules)."""
    spec = node.spec
    s = mixers.shapes_of(g, node)
    fam = spec.family
    op = f"mix/{fam}"
    leaves = M.mask_leaves(spec.mask)
    if fam == "toeplitz":
        kern = next(x for x in leaves if isinstance(x, M.Toeplitz))
        taps = None
        if isinstance(kern.kernel, M.ExplicitKernel):
            taps = g.type_of(node.input(kern.kernel.kernel.role)).shape[0]
        return _toeplitz_row(node.name, op, s, kern.kernel, taps, n)
    if fam in ("linear", "decayed_linear"):
        return _linear_row(g, node, op, s)
    return _softmax_row(g, node, op, s, M.conjuncts(spec.mask), n)


def _linear_row(g: Graph, node: Node, op: str, s: mixers.MixShapes) -> DecodeRow:
    """S_t = a_t ⊙ S_{t−1} + φ(k_t) v_tᵀ, o_t = φ(q_t)ᵀ S_t (/ φ(q_t)·z_t with z_t = Σ φ(k)):
    a [F, Dv] state per head (+ [F] for the normaliser); per token G·(4·F·Dv [+ F·Dv decay]
    [+ 4F normaliser]) plus φ of one query and one key."""
    spec = node.spec
    f = mixers.feature_width(g, node, s)
    one = mixers.MixShapes(s.g, sympy.Integer(1), sympy.Integer(1), s.dk, s.dv, s.e)
    rec = mixers.linear_recurrent(g, node, one, f)   # one token of the recurrent algorithm
    norm = spec.norm == "sum"
    state = s.g * (f * s.dv + (f if norm else 0))
    what = f"[{f}, {s.dv}] per head" + (f" + [{f}] normaliser" if norm else "")
    return DecodeRow(node.name, op, what, sympy.expand(rec.flops), s.e * state)


def _toeplitz_row(name: str, op: str, s: mixers.MixShapes, k, taps, n) -> DecodeRow:
    """y_t = C h_t, h_t = Ā h_{t−1} + B̄ u_t per channel (G·Dv channels)."""
    channels = s.g * s.dv
    if isinstance(k, M.ExplicitKernel):
        if n is not None and sympy.sympify(taps) == n:
            # taps over the whole length (an implicit filter): every input so far, and the taps
            # computed so far (one more per step, by the same graph at the step's position)
            return DecodeRow(name, op, "input history and taps [N] per channel", 2 * channels * n,
                             s.e * (channels + s.dv) * n, note="an explicit kernel: O(N) per token, no recurrence")
        return DecodeRow(name, op, f"last {taps} - 1 inputs per channel", 2 * channels * sympy.Min(taps, s.nq),
                         s.e * channels * (taps - 1))
    S = k.state
    if k.kind == "shift":   # the shift register (u_t, …, u_{t−S+1}); y_t = Σ taps · register
        return DecodeRow(name, op, f"shift register [{S}] per channel", 2 * channels * S, s.e * channels * S)
    if k.kind == "ema":     # a real diagonal state of S modes
        return DecodeRow(name, op, f"real state [{S}] per channel", 4 * channels * S, s.e * channels * S)
    if k.kind == "dplr":    # the dense S×S system (the conjugate half materialised): complex
        return DecodeRow(name, op, f"complex state [{S}] per channel (dense Ā)",
                         channels * (8 * S * S + 8 * S), 2 * s.e * channels * S)
    modes = S / 2 if k.conj else S
    if k.mimo:              # S5: one state of M modes shared by the channels
        return DecodeRow(name, op, f"complex state [{modes}] (shared by the channels)",
                         s.g * (8 * modes * s.dv + 8 * modes), 2 * s.e * s.g * modes)
    return DecodeRow(name, op, f"complex state [{modes}] per channel", channels * 8 * modes,
                     2 * s.e * channels * modes)


def _softmax_row(g: Graph, node: Node, op: str, s: mixers.MixShapes, terms, n) -> DecodeRow:
    """A key/value cache of the keys the next query can see: each step scores them (2·Dk),
    takes the softmax (5) and the weighted sum (2·Dv) per cached key and head."""
    spec = node.spec
    kept, what, grows, note, local = s.nk, "KV cache of every key", True, "", None
    cached = s.nk            # keys kept between steps (``kept``: the keys one query reads)
    for t in terms:
        if isinstance(t, M.Window) and t.block == 1:   # the new query sees W keys; W − 1 are kept
            kept, what, grows = sympy.Min(s.nk, t.size), f"KV ring buffer of the last {t.size} - 1 keys", False
            cached = sympy.Min(s.nk, t.size - 1)
        elif isinstance(t, M.Local):                     # the block so far
            kept, what, grows = sympy.Mod(s.nk - 1, t.size) + 1, f"KV cache of the current block of {t.size}", False
            cached, local = sympy.Mod(s.nk, t.size), t.size
        elif isinstance(t, M.Window):                    # blocks: the w − 1 blocks before the current one
            w, b = t.size, t.block
            kept = sympy.Min(s.nk, sympy.Mod(s.nk - 1, b) + 1 + (w - 1) * b)
            cached, local = sympy.Min(s.nk, sympy.Mod(s.nk, b) + (w - 1) * b), w * b
            what, grows = f"KV cache of the current block of {b} and the {w} - 1 before it", False
    if not any(isinstance(t, (M.Window, M.Local)) for t in terms) and any(
            not isinstance(t, (M.Causal, M.Full)) for t in terms):
        note = f"the mask {spec.mask} keeps fewer keys; counted as every key (an upper bound)"
    k_port, v_port = node.input("k"), node.input("v")
    v_type = g.type_of(v_port)
    v_rows = sympy.Mul(*v_type.shape[:-2]) if v_type.rank > 2 else sympy.Integer(1)
    if k_port is None:   # given scores (Synthesizer): only values are cached
        per_key, cache = 2 * s.dv + mixers.SOFTMAX_ELEMENTWISE, v_rows * s.dv
        what = what.replace("KV", "value")
    else:
        k_type = g.type_of(k_port)
        k_rows = sympy.Mul(*k_type.shape[:-2]) if k_type.rank > 2 else sympy.Integer(1)
        per_key = 2 * s.dk + 2 * s.dv + mixers.SOFTMAX_ELEMENTWISE
        cache = k_rows * s.dk + v_rows * s.dv
    ids = 0
    rounds = sum(isinstance(x, M.Buckets) for x in M.mask_leaves(spec.mask))
    if rounds:
        ids = 8 * v_rows * rounds  # the bucket id of every cached key (int64), per hashing round
    grows = grows and n is not None and sympy.sympify(kept).has(n)
    bounds = {} if local is None else dict(flops_bound=sympy.expand(s.g * local * per_key),
                                           bytes_bound=sympy.expand(local * (s.e * cache + ids)))
    return DecodeRow(node.name, op, what, sympy.expand(s.g * kept * per_key),
                     sympy.expand(cached * (s.e * cache + ids)), grows=grows, note=note, **bounds)


# ---- the whole graph -----------------------------------------------------------------------

def analyze_decode(graph: Graph, report) -> DecodeReport:
    """The decoding rows of every layer of ``graph``; ``report`` (its forward cost report)
    gives the sizes. N in the formulas is the context length (tokens seen, the new one
    included)."""
    n = report.n_symbol
    seq = seq_dim(graph)
    if seq is None or (n is not None and seq.name != n.name):   # a mixer's [B, H, N, D]: N by name
        seq = next((s for s in _dims(graph) if n is not None and s.name == n.name), seq)
    why = entry_refusal(graph, seq)
    from seqdsl.analysis.estimates import Estimates
    from seqdsl.analysis.report import _analyse

    subs = report.subs()

    def body_total(body: Graph) -> Estimates:     # a segment's step: its forward cost
        total = Estimates()
        for lr in _analyse(body, subs, report.machine, False, {}):
            total = total + lr.estimates
        return total

    rows = []
    win = W.windows(graph, seq) if seq is not None else None
    tables = prefix_tables(graph, seq) if seq is not None else None
    for node in graph.nodes() if why is None else ():
        if node.kind not in SKIP:
            rows.append(node_row(graph, node, n, Context(body_total), seq, win, tables))
        elif node.kind in (OpKind.PARAM, OpKind.BUFFER) and refusal(graph, node, seq, win=win,
                                                                    tables=tables) is not None:
            # a table [N, D] is read at the step's position, and so is a factorised one whose N
            # axis is outermost where it is flattened (seqdsl/ir/tables.py); any other tying of
            # an axis to N (N / rows inside the flattening) ties the module to one length
            why_not = (tables.refused.get(node.name) if tables else None) or refusal(graph, node, seq, win=win,
                                                                                      tables=tables)
            rows.append(DecodeRow(node.name, node.kind.value, "-", ZERO, ZERO, refusal=why_not))
    return DecodeReport(rows, n, dict(report.sizes), why)


def _dims(graph: Graph) -> set:
    return {s for node in graph.nodes() for t in node.outs for d in t.shape for s in sympy.sympify(d).free_symbols}


def _compact(e: sympy.Expr) -> str:
    """A formula kept in its solved (factored) form, written so that sympify parses it back."""
    from seqdsl.analysis.report import _SYMPY_NAMES

    e = sympy.factor(sympy.together(e))
    clashes = {s: sympy.Symbol(f"Symbol('{s.name}')") for s in e.free_symbols if s.name in _SYMPY_NAMES}
    return str(e.xreplace(clashes))


def render_decode(d: dict, formulas: bool = True) -> str:
    """The text of the ``"decode"`` section: one row per layer with a state or a refusal
    (stateless layers are summed into one line), the total and the crossover."""
    from seqdsl.analysis.table import _fmt, _name, _plain, fold_rows

    folding = fold_rows(d["layers"])        # identical repeat iterations: one row, ×count
    lines = ["", "decoding: one generated token after a context of N, for a batch of B sequences"
             + (" (a folded row: one instance, ×count)" if folding.folds else ""), ""]
    header = f"{'layer':<40} {'op':<22} {'FLOPs/token':>11} {'state B':>9}  time  memory  state"
    lines += [header, "-" * len(header)]
    rest = {"flops": 0.0, "state_bytes": 0.0}
    count = 0
    for r in d["layers"]:
        if r["state"] == "-" and "refusal" not in r:
            count += 1
            rest = {k: rest[k] + r["values"][k] for k in rest}
            continue
        v, name = r["values"], r["name"]
        found = folding.group_of(name)
        if found is not None and found[1].count > 1:
            if found[0] != found[1].first:
                continue
            name = f"{found[1].show(name)} ×{found[1].count}"
        lines.append(f"{_name(name)} {r['op']:<22} {_fmt(v['flops']):>11} {_fmt(v['state_bytes']):>9}  "
                     f"{r['big_o']['time']:<5} {r['big_o']['memory']:<7} {r['state']}")
        if "refusal" in r:
            lines.append(f"{'':<40}   cannot decode: {r['refusal']}")
        if r.get("note"):
            lines.append(f"{'':<40}   note: {r['note']}")
    lines.append(f"{_name(f'{count} stateless layers (per token)')} {'':<22} {_fmt(rest['flops']):>11} "
                 f"{_fmt(0.0):>9}")
    t = d["total"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<40} {'':<22} {_fmt(t['values']['flops']):>11} {_fmt(t['values']['state_bytes']):>9}  "
                 f"{t['big_o']['time']:<5} {t['big_o']['memory']}")
    if formulas:
        lines += [f"  flops per token = {_plain(t['flops'])}", f"  state bytes     = {_plain(t['state_bytes'])}"]
    if not d["can_decode"]:
        lines.append(f"cannot decode: {d['reason']}")
    c = d["crossover"]
    if c is not None:
        at = "never at these sizes" if c["value"] is None else f"N* = {c['value']:.6g}"
        lines.append(f"crossover: the {len(c['layers'])} growing softmax cache(s) cost more per token than "
                     f"everything else from {at}")
        if formulas and c["formula"] is not None:
            lines.append(f"  N* = {_plain(c['formula'])}")
    return "\n".join(lines)


def decode_dict(d: DecodeReport, report) -> dict:
    """The ``"decode"`` section of the JSON: formulas as strings sympy parses back, their
    values at the report's sizes, and the leading term in N of each."""
    from seqdsl.analysis.report import _text, big_o

    def costs(flops, state_bytes, bounds=(None, None)) -> dict:
        fb, bb = (flops if bounds[0] is None else bounds[0]), (state_bytes if bounds[1] is None else bounds[1])
        return {"flops": _text(flops), "state_bytes": _text(state_bytes),
                "big_o": {"time": big_o(fb, d.n), "memory": big_o(bb, d.n)},
                "values": {"flops": report.value(flops), "state_bytes": report.value(state_bytes)}}

    layers = []
    for r in d.rows:
        row = {"name": r.name, "op": r.op, "state": r.state,
               **costs(r.flops, r.state_bytes, (r.flops_bound, r.bytes_bound))}
        if r.refusal is not None:
            row["refusal"] = r.refusal
        if r.note:
            row["note"] = r.note
        layers.append(row)
    ok, why = d.can_decode
    out = {"can_decode": ok, "reason": why, "layers": layers, "total": costs(d.flops, d.state_bytes, d.bounds()),
           "crossover": None}
    cross = d.crossover() if ok else None
    if cross is not None:
        out["crossover"] = {"attention_flops": _text(cross["attention_flops"]), "rest_flops": _text(cross["rest_flops"]),
                            "formula": None if cross["formula"] is None else _compact(cross["formula"]),
                            "value": cross["value"], "layers": cross["layers"]}
    return out
