"""The decoding plan a generated module carries (issue 13): its sequence dim, each stateful
call in call order (a slot of :class:`codegen.torch.decode.DecodeState`), the nodes that read
the absolute position (``seq=True`` / ``rt.seq_rows(N)`` in the generated code), the window
slices — or why it cannot decode.

Each node's class comes from seqdsl/ir/decode_rules.py, the rules ``analyze --decode`` reads
too (position-wise, positional, a stateful family, window / re-run below a suffix, or a
refusal naming the layer and its position in the ``.seq`` file). The sequence dim must be
read from the inputs at each call (a module that fixes N cannot take one token).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import sympy

from seqdsl.ir import decode_rules as R
from seqdsl.ir import decode_window as W
from seqdsl.ir import mix as M
from seqdsl.ir.decode_rules import STATEFUL, seq_dim
from seqdsl.ir.graph import Graph, Node, OpKind
from seqdsl.ir.tables import prefix_tables


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
        why = f"{R.where(g.inputs[1])}decoding feeds one input a position at a time; the entry takes " \
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
            kind = R.decode_class(g, node, n, win, tables)
            if kind == "window":
                slots.append(Slot(node.name, "window", "batch" if win.slices[node.id].batched else "shared"))
            elif kind == "rerun":
                if _runtime_kind(node) is not None:      # a stateful runtime: its plain call on the window
                    slots.append(Slot(node.name, _runtime_kind(node), "rerun"))
            elif kind == "window-softmax":
                slots.append(Slot(node.name, "softmax", "window"))
            elif kind in STATEFUL:
                slots.append(Slot(node.name, kind, _detail(g, node, n)))
            elif kind == "positional":
                positional.add(node.id)
        if only is None and (why := R.output_refusal(g, n, win)) is not None:
            raise R.Refuse(g.node(g.outputs[0].node), why)
    except R.Refuse as why:
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
