"""Sequence parallelism in the cost model: ``analyze complexity --nproc P [--memory 24GB]``.

The sequence of N positions is split over P ranks (docs/distributed.md). Per layer:

- **per-rank FLOPs and activation bytes**: a layer whose cost grows with N is split, so a
  rank does its cost / P (the ring divides the mask's pairs, state passing the positions,
  the all-to-alls the heads or channels); the small extras (prefix merge of P states) are
  left out. A layer whose cost does not depend on N runs whole on every rank. (A table over
  N computed whole on every rank, such as a Hyena filter, is counted / P: an underestimate.)
- **communication bytes sent per rank, forward** (fp32, 4 bytes; shapes of the layer's
  inputs at the global N, n = N/P rows per rank):
  softmax, ring: 2(P−1)·|K/V of n rows|; softmax, Ulysses (heads split evenly over the
  ranks and no per-head mask term): (P−1)/P·(|q| + |k| + |v| + |o|) of n rows;
  linear / decayed / gated / selective scan: (P−1)·|state| (all-gather of every rank's
  state and transition, independent of N); SSM convolutions: (P−1)·|SSM state|;
  explicit long convolutions: 2(P−1)/P·|v of n rows|; short convolutions: (P−1)·2(w−1)
  rows of the halo; softmax of replicated queries (G global rows) over sharded keys:
  (P−1)·|G rows of (o, lse)|; rows read whole (``rt.seq_take``: global tokens ``x[:, :G]``,
  a [CLS] row ``x[:, 0]``): one all-reduce of the rows taken, 2(P−1)/P of the buffer sent
  by a ring all-reduce, independent of N (the test counts the buffer in the comm layer).
  The backward sends about twice as much (ring: (4P − 2)/(2P − 2)×).
- **per-rank memory** (forward): the weights (4 bytes each, replicated) + the rank's rows of
  the entry's inputs (``inputs_per_rank``) + the activation bytes / P + what each exchange
  holds (``held_bytes_per_rank``, codegen/distributed/memory.py: the ring, two K/V blocks
  in flight, its fp32 statistics and one tile of scores; Ulysses, one round's resharded
  tensors; replicated queries, the gathered (o, lse) and the G × n scores). A softmax layer
  that could run either way also states what the other strategy would hold
  (``alternative``), and ``memory_per_rank_ring`` the total with the ring. The largest N
  that fits ``--memory`` is found by bisection over N on the formula of the strategy that
  the cost rule takes under that budget (Ulysses while it fits, else the ring:
  ``max_n_strategy``). Every layer's held bytes are summed, as if alive at once: an
  overestimate for deep models.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from codegen.distributed import memory as mem
from codegen.distributed import plan
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, OpKind

P = sympy.Symbol("P", positive=True, integer=True)
BYTES = 4


@dataclass
class RankRow:
    name: str
    strategy: str
    flops: sympy.Expr
    activation_bytes: sympy.Expr
    comm_bytes: sympy.Expr


def _numel(shape) -> sympy.Expr:
    out = sympy.Integer(1)
    for d in shape:
        out *= sympy.sympify(d)
    return out


def _rows(shape, n) -> sympy.Expr:
    """Elements of one rank's rows of a tensor (its N axis divided by P)."""
    return _numel(shape).subs(n, n / P) if n is not None else _numel(shape)


def take_elements(g: Graph, node, n) -> sympy.Expr | None:
    """Elements of the buffer that ``rt.seq_take`` all-reduces for a slice that reads rows of
    a sharded tensor whole (global tokens ``x[:, :G]``, a [CLS] row ``x[:, 0]``): the sliced
    tensor with its N axis cut to the rows taken (the other axes are sliced afterwards)."""
    found = plan._n_item(g, node, n)
    if found is None:
        return None
    shape = g.type_of(node.input("x")).shape
    _, item = found
    rows = sympy.Integer(1) if item[0] == "index" else sympy.sympify(item[2]) - sympy.sympify(item[1])
    return sympy.simplify(_numel(shape) / n * rows)


def _strategy(g: Graph, node, n, sizes: dict, nproc: int, states: dict,
              alt: dict | None = None) -> tuple[str, sympy.Expr, sympy.Expr]:
    """(strategy, bytes sent per rank forward, bytes in flight) of one layer; ``alt`` gets,
    for a softmax layer that could run either way, what the ring would hold instead."""
    t = lambda role: g.type_of(node.input(role)).shape if node.input(role) is not None else None  # noqa: E731
    if node.kind == OpKind.SLICE and nproc > 1 and states.get(node.id) == plan.REPL \
            and states.get(node.inputs[0].node) == plan.SHARD:
        # rt.seq_take: one all-reduce (sum) of the rows taken, a ring all-reduce sending
        # 2(P − 1)/P of its buffer per rank; the buffer is the layer's output (counted whole)
        return "rows gathered (all-reduce)", 2 * (P - 1) / P * take_elements(g, node, n) * BYTES, sympy.Integer(0)
    if node.kind == OpKind.CONV1D:
        x, w = t("x"), t("weight")
        width = sympy.sympify(w[-1]) if w else 1
        return "halo exchange", (P - 1) * 2 * (width - 1) * _numel(x) / sympy.sympify(x[-2]) * BYTES, 0
    if node.kind != OpKind.MIX or nproc == 1:             # one rank: the one-process algorithm, nothing sent
        return "none", sympy.Integer(0), sympy.Integer(0)
    spec = node.spec
    fam = spec.family
    if fam in ("softmax", "content_sparse", "synthetic"):
        q, k, v = t("q"), t("k"), t("v")
        heads = sympy.sympify(q[-3]) if len(q) >= 3 else sympy.Integer(1)
        h = heads.subs({sympy.Symbol(s, positive=True, integer=True): val for s, val in sizes.items()})
        if n is not None and sympy.sympify(q[-2]) != n and sympy.sympify(k[-2]) == n:
            # replicated queries (global tokens): every rank's partial (o, lse) all-gathered
            piece = _numel(q[:-1]) * (sympy.sympify(v[-1]) + 1)
            scores = 2 * _numel(q[:-1]) * n / P                  # scores and weights, G × n per (batch, head)
            return "replicated queries, LSE merge", (P - 1) * piece * BYTES, (P * piece + scores) * BYTES
        per_head = any(isinstance(leaf, M.RandomBlocks) and leaf.per_head for leaf in M.mask_leaves(spec.mask))
        qr, kr, vr = _rows(q, n), _rows(k, n), _rows(v, n)
        bh, rows = _numel(q[:-2]), (n / P if n is not None else sympy.Integer(1))
        if h.is_number and int(h) % nproc == 0 and not per_head:
            sent = (P - 1) / P * (2 * qr + kr + vr) * BYTES
            if alt is not None:
                alt[node.name] = ("ring", mem.ring_bytes(kr, vr, bh, rows, BYTES))
            return "Ulysses all-to-all", sent, mem.ulysses_bytes(qr, kr, vr, heads, P, BYTES)
        return "ring", 2 * (P - 1) * (kr + vr) / 2 * BYTES, mem.ring_bytes(kr, vr, bh, rows, BYTES)
    if fam in ("linear", "decayed_linear"):
        q, v = t("q"), t("v")
        lead = [sympy.Max(sympy.sympify(a), sympy.sympify(b)) for a, b in zip(q[:-2], v[:-2])]
        state = _numel(lead) * sympy.sympify(q[-1]) * (sympy.sympify(v[-1]) + 1)
        return "state passing", (P - 1) * state * BYTES, 0
    v = t("v")
    leaf = next(x for x in M.mask_leaves(spec.mask) if isinstance(x, M.Toeplitz))
    if isinstance(leaf.kernel, M.ExplicitKernel):
        return "sequence↔channel all-to-all", 2 * (P - 1) / P * _rows(v, n) * BYTES, 0
    biggest = max((_numel(g.type_of(ref.node_port(node)).shape) if hasattr(ref, "node_port") else
                   _numel(g.type_of(node.input(ref.role)).shape) for _, ref in leaf.kernel.params),
                  key=lambda e: e.subs({s: 64 for s in e.free_symbols}), default=sympy.Integer(1))
    batch = _numel(v[:-2])
    return "state passing", (P - 1) * 2 * batch * biggest * BYTES, 0


def analyze_distributed(graph: Graph, report, nproc: int, memory: float | None = None) -> dict:
    """The ``distributed`` section of the report: per layer the strategy, per-rank FLOPs and
    activation bytes and the bytes each rank sends (formulas in N and P, and values at the
    report's sizes with P = ``nproc``); per-rank memory; the largest N fitting ``memory``."""
    n = report.n_symbol
    nodes = {nd.name: nd for nd in graph.nodes()}
    rows, held, flight, alt_flight, alt = [], [], sympy.Integer(0), sympy.Integer(0), {}
    states = plan._states(graph, n) if n is not None else {}
    for lr in report.layers:
        est = lr.estimates
        node = nodes.get(lr.name)
        split = n is not None and n in est.flops.free_symbols | est.activation_bytes.free_symbols
        strategy, comm, inflight = ("none", sympy.Integer(0), sympy.Integer(0)) if node is None else \
            _strategy(graph, node, n, report.sizes, nproc, states, alt)
        flight += inflight
        held.append(sympy.sympify(inflight))          # compact as written (simplify is slow on Min)
        alt_flight += alt[lr.name][1] if lr.name in alt else inflight
        rows.append(RankRow(lr.name, strategy if split or strategy != "none" else "replicated",
                            est.flops / P if split else est.flops,
                            est.activation_bytes / P if split else est.activation_bytes,
                            sympy.simplify(comm) if comm != 0 else sympy.Integer(0)))
    weights = report.total.param_count * BYTES
    inputs = sum((_rows(nd.out.shape, n) for nd in graph.inputs), sympy.Integer(0)) * BYTES   # this rank's rows
    memory_rank = sympy.simplify(weights + inputs + sum(r.activation_bytes for r in rows) + flight)
    memory_ring = memory_rank + (alt_flight - flight) if alt else memory_rank
    values = dict(report.sizes)

    def at(e: sympy.Expr, **extra) -> float:
        sub = {s: extra.get(s.name, values.get(s.name, 1)) for s in sympy.sympify(e).free_symbols}
        sub.update({s: nproc for s in sympy.sympify(e).free_symbols if s.name == "P"})
        try:
            return float(sympy.sympify(e).xreplace(sub))
        except TypeError:
            return float("nan")
    def layer(r: RankRow, h: sympy.Expr) -> dict:
        d = {"name": r.name, "strategy": r.strategy, "flops_per_rank": str(r.flops),
             "activation_bytes_per_rank": str(r.activation_bytes), "comm_bytes_per_rank": str(r.comm_bytes),
             "held_bytes_per_rank": str(h),
             "values": {"flops_per_rank": at(r.flops), "activation_bytes_per_rank": at(r.activation_bytes),
                        "comm_bytes_per_rank": at(r.comm_bytes), "held_bytes_per_rank": at(h)}}
        if r.name in alt:          # the softmax rule's other choice, what it would hold
            name, e = alt[r.name]
            d["alternative"] = {"strategy": name, "held_bytes_per_rank": str(e),
                                "value": at(e)}
        return d
    out = {
        "nproc": nproc,
        "layers": [layer(r, h) for r, h in zip(rows, held)],
        "memory_per_rank": str(memory_rank),
        "inputs_per_rank": str(sympy.simplify(inputs)),
        "comm_bytes_per_rank": str(sympy.simplify(sum(r.comm_bytes for r in rows))),
        "values": {"memory_per_rank": at(memory_rank), "inputs_per_rank": at(inputs), "comm_bytes_per_rank": at(sum(r.comm_bytes for r in rows)),
                   "flops_per_rank": at(sum(r.flops for r in rows))},
    }
    if alt:
        out["memory_per_rank_ring"] = str(memory_ring)
        out["values"]["memory_per_rank_ring"] = at(memory_ring)
    if memory is not None and n is not None:
        out["memory_budget"] = memory
        out["max_n"] = largest_n(lambda N: at(memory_rank, N=N), memory)
        out["max_n_strategy"] = "as chosen"
        if alt:
            # the cost rule with a budget (sequence_parallel(memory=...)): Ulysses while it fits
            # or holds no more than the ring, the ring beyond
            ring_n = largest_n(lambda N: at(memory_ring, N=N), memory)
            if ring_n is not None and (out["max_n"] is None or ring_n > out["max_n"]):
                out["max_n"], out["max_n_strategy"] = ring_n, "ring"
    return out


def largest_n(mem, budget: float, hi: int = 1 << 40) -> int | None:
    """The largest N ≥ 1 with mem(N) ≤ budget (memory grows with N); None if even N = 1 does not fit."""
    if mem(1) > budget:
        return None
    lo, top = 1, 2
    while top < hi and mem(top) <= budget:
        lo, top = top, top * 2
    while top - lo > 1:
        mid = (lo + top) // 2
        lo, top = (mid, top) if mem(mid) <= budget else (lo, mid)
    return lo


def parse_memory(text: str) -> float:
    """'24GB', '512MiB', '1e9' → bytes."""
    units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20,
             "gib": 2**30, "tib": 2**40}
    s = text.strip().lower().replace(" ", "")
    num = s.rstrip("kmgtib")
    unit = s[len(num):]
    if unit not in units:
        raise ValueError(f"--memory: unknown unit in {text!r} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)")
    try:
        return float(num) * units[unit]
    except ValueError:
        raise ValueError(f"--memory: {text!r} is not a size such as 24GB") from None


def render(section: dict) -> str:
    """The text table of the section."""
    P_ = section["nproc"]
    lines = [f"sequence parallel over P = {P_} ranks (per rank; formulas in N and P):"]
    for r in section["layers"]:
        if r["strategy"] in ("none", "replicated"):      # position-wise: its cost / P, nothing sent
            continue
        v = r["values"]
        lines.append(f"  {r['name']}: {r['strategy']}; flops {v['flops_per_rank']:.3g} = {r['flops_per_rank']}; "
                     f"sends {v['comm_bytes_per_rank']:.3g} B = {r['comm_bytes_per_rank']}; "
                     f"holds {v['held_bytes_per_rank']:.3g} B = {r['held_bytes_per_rank']}")
        if "alternative" in r:
            a = r["alternative"]
            lines.append(f"    (the {a['strategy']} would hold {a['value']:.3g} B = {a['held_bytes_per_rank']})")
    v = section["values"]
    lines.append("  every other layer: position-wise (its cost / P, nothing sent) or without N (whole on every rank)")
    lines.append(f"  flops per rank: {section['values']['flops_per_rank']:.3g}")
    lines.append(f"  memory per rank: {v['memory_per_rank'] / 2**30:.3g} GiB = {section['memory_per_rank']}")
    lines.append(f"  sent per rank per forward: {v['comm_bytes_per_rank'] / 2**20:.3g} MiB = "
                 f"{section['comm_bytes_per_rank']}")
    if "memory_per_rank_ring" in section:
        lines.append(f"  memory per rank with the ring for softmax: {v['memory_per_rank_ring'] / 2**30:.3g} GiB = "
                     f"{section['memory_per_rank_ring']}")
    if "max_n" in section:
        how = " (the ring: Ulysses would not fit)" if section.get("max_n_strategy") == "ring" else ""
        lines.append(f"  largest N in {section['memory_budget'] / 2**30:.3g} GiB per rank: {section['max_n']}{how}")
    return "\n".join(lines)
