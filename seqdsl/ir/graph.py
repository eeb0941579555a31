"""The layer graph: frozen, typed nodes in a networkx DiGraph.

Every tensor is the output of exactly one node. A node reads other nodes' outputs
through its ``inputs``: ``(role, node_id, output_index)`` triples; networkx holds the
same edges (with their roles) for traversal and drawing. Learnable weights are PARAM
nodes, so tied weights are simply one node read twice. Nodes that run a user definition
as a function (MoE experts, fixed-point cells, recurrent segments) hold its body as a
nested :class:`Graph` in the ``body`` attribute.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import sympy

from seqdsl.errors import NOWHERE, Pos
from seqdsl.ir.mix import MixSpec, Ref, mask_leaves
from seqdsl.ir.types import TensorType


class OpKind(enum.Enum):
    INPUT = "input"            # a declared input of the entry
    PARAM = "param"            # a learnable weight (attrs: init, trainable)
    BUFFER = "buffer"          # a fixed tensor (random features, random synthesizer)
    OUTPUT = "output"          # the entry's results
    GET = "get"                # one output of a multi-output node
    POSITIONS = "positions"    # 0..N-1 as floats, or sinusoidal encodings
    LINEAR = "linear"          # x W^T + b along the last axis
    SEQ_PROJECT = "seq_project"  # a learned projection along the sequence axis (Linformer)
    EMBED = "embed"            # table lookup
    NORM = "norm"              # layer / rms / batch / group norm
    MLP = "mlp"                # linear, activation (optionally gated), linear
    CONV1D = "conv1d"          # short depthwise convolution along the sequence
    POOL = "pool"              # windowed pooling along the sequence
    REDUCE = "reduce"          # sum / mean / max over an axis
    SOFTMAX = "softmax"        # softmax over an axis
    UNARY = "unary"            # elementwise function (attrs: fn)
    BINARY = "binary"          # elementwise arithmetic with broadcasting (attrs: op)
    MATMUL = "matmul"          # batched matrix product
    REARRANGE = "rearrange"    # einops-style axis permutation / split / merge
    SLICE = "slice"            # basic indexing
    CONCAT = "concat"          # along an axis
    DROPOUT = "dropout"
    HASH = "hash"              # LSH bucket ids (random rotations, fixed seed)
    SORT_BLOCKS = "sort_blocks"  # Sinkhorn-sorted blocks: block permutation from scores
    MIX = "mix"                # the token-mixing template (attrs: spec)
    MOE = "moe"                # mixture of experts (attrs: body, experts, top_k)
    FIXED_POINT = "fixed_point"  # weight-tied block iterated to a fixed point (attrs: body)
    RECURRENT = "recurrent"    # a block applied segment by segment, carrying state (attrs: body)


@dataclass(frozen=True)
class Port:
    role: str
    node: int
    index: int = 0


@dataclass(frozen=True, eq=False)
class Node:
    id: int
    kind: OpKind
    name: str                      # layer path, e.g. "layers.3.attn.q"
    inputs: tuple[Port, ...]
    outs: tuple[TensorType, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    pos: Pos = field(default=NOWHERE, compare=False)

    @property
    def out(self) -> TensorType:
        return self.outs[0]

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)

    @property
    def spec(self) -> MixSpec | None:
        return self.attr("spec")

    def input(self, role: str) -> Port | None:
        for p in self.inputs:
            if p.role == role:
                return p
        return None


class Graph:
    """A layer graph. A node can only read nodes that exist, so ids are a topological order."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self._nodes: dict[int, Node] = {}
        self.outputs: list[Port] = []
        # Instances of user definitions, in call order: (layer path, kind, definition name).
        self.layers: list[tuple[str, str, str]] = []
        # Per instance path: its declared tensor arguments [(name, port)] and its results [port].
        self.instances: dict[str, tuple[list[tuple[str, Port]], list[Port]]] = {}
        # Per `repeat`: (path of its layers, count, shared, per iteration the tensors it rebinds
        # as (local name, port before or None, port after)).
        self.repeats: list[tuple[str, int, bool, list[list[tuple[str, Port | None, Port]]]]] = []
        self.names: set[str] = set()
        self._next = 0

    # ---- building
    def add(self, kind: OpKind, name: str, inputs: tuple[Port, ...] | list[Port],
            outs: tuple[TensorType, ...] | TensorType, attrs: dict[str, Any] | None = None,
            pos: Pos = NOWHERE) -> Node:
        if isinstance(outs, TensorType):
            outs = (outs,)
        node = Node(self._next, kind, name, tuple(inputs), tuple(outs),
                    tuple(sorted((attrs or {}).items())), pos)
        self._next += 1
        self._nodes[node.id] = node
        self.names.add(name)
        self.nx.add_node(node.id, node=node)
        for p in node.inputs:
            self.nx.add_edge(p.node, node.id, role=p.role, index=p.index)
        return node

    # ---- reading
    def node(self, nid: int) -> Node:
        return self._nodes[nid]

    def nodes(self, kind: OpKind | None = None) -> list[Node]:
        """All nodes (of one kind) in topological order."""
        return [n for _, n in sorted(self._nodes.items()) if kind is None or n.kind == kind]

    def type_of(self, port: Port) -> TensorType:
        return self._nodes[port.node].outs[port.index]

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def inputs(self) -> list[Node]:
        return self.nodes(OpKind.INPUT)

    @property
    def params(self) -> list[Node]:
        return self.nodes(OpKind.PARAM)

    def set_attr(self, nid: int, key: str, value: Any) -> None:
        """Replace one attribute of a node; its id, inputs and outputs stay (a pass that
        rewrites a nested ``body`` uses this on its own copy of the graph)."""
        old = self._nodes[nid]
        node = replace(old, attrs=tuple(sorted({**dict(old.attrs), key: value}.items())))
        self._nodes[nid] = node
        self.nx.nodes[nid]["node"] = node

    def remove(self, nids: set[int]) -> None:
        for nid in nids:
            self.names.discard(self._nodes.pop(nid).name)
            self.nx.remove_node(nid)


class VerifyError(AssertionError):
    """An IR invariant does not hold: a bug in the compiler, not in the user's file."""


def param_count(g: Graph) -> sympy.Expr:
    """Number of trainable weights, symbolic in the dims; nested bodies counted with their
    multiplicity (MoE experts)."""
    total = sympy.Integer(0)
    for n in g.nodes():
        if n.kind == OpKind.PARAM:
            total += n.out.numel()
        body = n.attr("body")
        if body is not None:
            total += n.attr("copies", 1) * param_count(body)
    return sympy.expand(total)


def verify(g: Graph) -> None:
    """Check the invariants every pass must keep; raise :class:`VerifyError` otherwise."""
    if not nx.is_directed_acyclic_graph(g.nx):
        raise VerifyError(f"{g.name}: the graph has a cycle")
    names: set[str] = set()
    for n in g.nodes():
        if not isinstance(n.kind, OpKind):
            raise VerifyError(f"node {n.id}: kind {n.kind!r} is not an OpKind")
        if n.name in names and n.kind not in (OpKind.GET,):
            raise VerifyError(f"{g.name}: two nodes are named {n.name!r}")
        names.add(n.name)
        if not n.outs:
            raise VerifyError(f"{n.name}: a node must produce at least one tensor")
        for t in n.outs:
            if not isinstance(t, TensorType) or t.dtype not in ("float", "int", "bool"):
                raise VerifyError(f"{n.name}: bad output type {t!r}")
        if n.kind in (OpKind.INPUT, OpKind.PARAM, OpKind.BUFFER) and n.inputs:
            raise VerifyError(f"{n.name}: a {n.kind.value} node reads no inputs")
        for p in n.inputs:
            if p.node not in g._nodes:
                raise VerifyError(f"{n.name}: input {p.role} reads missing node {p.node}")
            if p.index >= len(g.node(p.node).outs):
                raise VerifyError(f"{n.name}: input {p.role} reads output {p.index} of a node with fewer")
        if n.kind == OpKind.MIX:
            _verify_mix(n)
        body = n.attr("body")
        if body is not None:
            verify(body)
    for p in g.outputs:
        if p.node not in g._nodes:
            raise VerifyError(f"{g.name}: output reads missing node {p.node}")
    for src, dst in g.nx.edges():
        if src >= dst:
            raise VerifyError(f"{g.name}: node {dst} reads a later node {src}; ids must be topological")


def _refs(obj: Any) -> list[Ref]:
    if isinstance(obj, Ref):
        return [obj]
    if hasattr(obj, "__dataclass_fields__"):
        out = []
        for f in obj.__dataclass_fields__:
            out += _refs(getattr(obj, f))
        return out
    if isinstance(obj, tuple):
        return [r for x in obj for r in _refs(x)]
    return []


def _verify_mix(n: Node) -> None:
    spec = n.spec
    if not isinstance(spec, MixSpec):
        raise VerifyError(f"{n.name}: a mix node carries a MixSpec")
    roles = {p.role for p in n.inputs}
    for r in _refs(spec):
        if r.role not in roles:
            raise VerifyError(f"{n.name}: the spec refers to {r} which is not an input")
    if "v" not in roles:
        raise VerifyError(f"{n.name}: a mix node needs values")
    if mask_leaves(spec.mask) is None:
        raise VerifyError(f"{n.name}: no mask")


# ---- printing ---------------------------------------------------------------------


def _attr_text(key: str, value: Any) -> str:
    if isinstance(value, Graph):
        return f"{key}=<{value.name}: {len(value)} nodes>"
    return f"{key}={value}"


def format_node(n: Node) -> str:
    args = ", ".join(f"{p.role}=%{p.node}" + (f".{p.index}" if p.index else "") for p in n.inputs)
    attrs = ", ".join(_attr_text(k, v) for k, v in n.attrs)
    outs = ", ".join(str(t) for t in n.outs)
    text = f"%{n.id} = {n.kind.value}[{n.name}]({args})"
    if attrs:
        text += " {" + attrs + "}"
    return f"{text} : {outs}"


def format_graph(g: Graph, indent: str = "") -> str:
    """A readable listing, one node a line, nested bodies indented."""
    lines = [f"{indent}graph {g.name} {{"]
    for n in g.nodes():
        lines.append(indent + "  " + format_node(n))
        body = n.attr("body")
        if body is not None:
            lines.append(format_graph(body, indent + "    "))
    outs = ", ".join(f"%{p.node}" + (f".{p.index}" if p.index else "") for p in g.outputs)
    lines.append(f"{indent}  return {outs}")
    lines.append(indent + "}")
    return "\n".join(lines)


def dump(g: Graph, stage: str) -> None:
    """With SEQDSL_DUMP=dir set, write the graph after a stage as ``dir/NN-stage.txt``."""
    out_dir = os.environ.get("SEQDSL_DUMP")
    if not out_dir:
        return
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    count = len(list(path.glob("*.txt")))
    (path / f"{count:02d}-{g.name}-{stage}.txt").write_text(format_graph(g) + "\n")
