"""The structure of the ``.seq`` file, recovered on the flat layer graph.

The elaborator inlines every definition and unrolls every ``repeat``, so that the graph,
the analysis and the algorithm choice see plain nodes. Generated code should not be flat:
a user expects one ``nn.Module`` class per definition, a loop over an ``nn.ModuleList``
for a ``repeat``, and state_dict keys that are the file's layer paths through ordinary
module nesting. The graph keeps what that needs: node names are layer paths, and the
elaborator records each instance of a definition (``graph.instances``: its arguments and
results) and each repeat (``graph.repeats``: what every iteration rebinds).

This module turns those into a tree of :class:`Scope` s:

- the entry (path ``""``), an *instance* of a definition (``layers.3.h3_block``), an
  *iteration* of a repeat (``layers.3``) and the *loop* of a repeat (``layers``), whose
  children are its iterations;
- every node belongs to the deepest scope whose path prefixes its name;
- a scope's inputs are the values its nodes read from outside it, its outputs the values of
  its nodes read outside it — found on the graph, so they are right by construction; the
  elaborator's records only name and order them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seqdsl.ir.graph import Graph, OpKind, Port


@dataclass
class Scope:
    path: str                       # layer path ("" for the entry)
    kind: str                       # entry | instance | iteration | loop
    definition: str | None = None   # the definition an instance runs
    children: list[Scope] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)        # ids of the nodes directly in it
    inputs: list[tuple[str | None, Port]] = field(default_factory=list)   # (declared name, value read)
    outputs: list[tuple[str | None, Port]] = field(default_factory=list)  # (declared name, value given)
    shared: bool = False            # a loop over one module (``repeat L shared``)
    loopable: bool = False          # a loop whose iterations can run as `for layer in layers`
    carried: list[str] = field(default_factory=list)     # loop: the names each iteration rebinds

    def subtree(self) -> set[int]:
        out = set(self.nodes)
        for c in self.children:
            out |= c.subtree()
        return out

    def rel(self, name: str) -> str:
        """``name`` relative to this scope's path (a shared repeat's weight has no step index:
        ``layers.attn.q`` is ``attn.q`` in the step ``layers.2``)."""
        if not self.path:
            return name
        if name.startswith(self.path + "."):
            return name[len(self.path) + 1:]
        parts, at = name.split("."), 0
        for step in self.path.split("."):
            if at < len(parts) and parts[at] == step:
                at += 1
            elif not step.isdigit():
                return name
        return ".".join(parts[at:])


def _parts(path: str) -> tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


def build(graph: Graph) -> Scope:
    """The scope tree of ``graph`` (see the module docstring)."""
    root = Scope("", "entry")
    scopes: dict[tuple[str, ...], Scope] = {(): root}
    shared_loops: set[tuple[str, ...]] = set()

    def scope_at(parts: tuple[str, ...], kind: str, definition: str | None = None) -> Scope:
        s = scopes.get(parts)
        if s is None:
            s = scopes[parts] = Scope(".".join(parts), kind, definition)
        return s

    for path, count, shared, _ in graph.repeats:
        loop = scope_at(_parts(path), "loop")
        loop.shared = shared
        if shared:
            shared_loops.add(_parts(path))
        for i in range(count):
            scope_at(_parts(path) + (str(i),), "iteration")
    for path, _kind, definition in graph.layers:
        scope_at(_parts(path), "instance", definition)
    # parents: the longest proper prefix that is a scope
    for parts, s in sorted(scopes.items(), key=lambda kv: len(kv[0])):
        if not parts:
            continue
        parent = next(scopes[parts[:k]] for k in range(len(parts) - 1, -1, -1) if parts[:k] in scopes)
        parent.children.append(s)
    counts = {_parts(path): count for path, count, _, _ in graph.repeats}
    for n in graph.nodes():
        parts = _parts(n.name)
        names = [parts]
        for loop in shared_loops:     # a shared repeat's weights are every step's own
            if parts[:len(loop)] == loop and len(parts) > len(loop) and not parts[len(loop)].isdigit():
                names = [loop + (str(i),) + parts[len(loop):] for i in range(counts[loop])]
        for parts in names:
            k = len(parts) - 1 if n.kind not in (OpKind.INPUT, OpKind.OUTPUT) else 0
            while parts[:k] not in scopes:
                k -= 1
            owner = scopes[parts[:k]]
            if owner.kind == "loop":    # a node named after the loop itself: the enclosing scope
                owner = next(scopes[parts[:j]] for j in range(k - 1, -1, -1) if parts[:j] in scopes
                             and scopes[parts[:j]].kind != "loop")
            owner.nodes.append(n.id)
    for s in scopes.values():
        s.children.sort(key=lambda c: min(c.subtree(), default=1 << 60))
    _prune(root)
    _dissolve_stateless_loops(graph, root)
    _boundaries(graph, root)
    _loops(graph, root)
    return root


def _prune(s: Scope) -> None:
    """Drop scopes with no nodes (an instance whose nodes dead-code elimination removed)."""
    for c in s.children:
        _prune(c)
    s.children = [c for c in s.children if c.subtree()]


def _dissolve_stateless_loops(graph: Graph, s: Scope) -> None:
    """A repeat with no weights and no definition calls (Hyena's `repeat order - 1` of gates
    and long convolutions) needs no modules: its nodes are written in the enclosing class,
    where the gates around a mixer can still be folded into its call."""
    for c in s.children:
        _dissolve_stateless_loops(graph, c)
    keep = []
    for c in s.children:
        if c.kind == "loop" and all(not it.children for it in c.children) and not any(
                graph.node(i).kind in (OpKind.PARAM, OpKind.BUFFER) for i in c.subtree()):
            s.nodes = sorted(s.nodes + sorted(c.subtree()))
        else:
            keep.append(c)
    s.children = keep


def _boundaries(graph: Graph, root: Scope) -> None:
    readers: dict[tuple[int, int], list[int]] = {}
    for n in graph.nodes():
        for p in n.inputs:
            readers.setdefault((p.node, p.index), []).append(n.id)
    outs = {(p.node, p.index) for p in graph.outputs}

    def visit(s: Scope) -> None:
        inside = s.subtree()
        seen: set[tuple[int, int]] = set()
        for nid in sorted(inside):
            for p in graph.node(nid).inputs:
                key = (p.node, p.index)
                if p.node not in inside and key not in seen:
                    seen.add(key)
                    s.inputs.append((None, Port("in", p.node, p.index)))
        for nid in sorted(inside):
            if graph.node(nid).kind in (OpKind.PARAM, OpKind.BUFFER) and s.kind != "entry" and any(
                    nid in c.subtree() for c in _shared_steps(root)):
                continue        # a shared repeat's weight: every step holds it, none passes it on
            for index in range(len(graph.node(nid).outs)):
                key = (nid, index)
                if any(r not in inside for r in readers.get(key, ())) or (key in outs and s.path):
                    s.outputs.append((None, Port("out", nid, index)))
        if s.kind == "instance" and s.path in graph.instances:
            args, results = graph.instances[s.path]
            names = {(p.node, p.index): name for name, p in reversed(args)}
            s.inputs = [(names.get((p.node, p.index)), p) for _, p in s.inputs]
            declared = [name for name, _ in args]     # the call's order, as the file declares it
            s.inputs.sort(key=lambda i: declared.index(i[0]) if i[0] in declared else len(declared))
            order = {(p.node, p.index): i for i, p in enumerate(results)}
            s.outputs.sort(key=lambda o: order.get((o[1].node, o[1].index), len(order) + o[1].node))
        for c in s.children:
            visit(c)

    visit(root)


def _shared_steps(root: Scope) -> list[Scope]:
    out = []
    for c in root.children:
        if c.kind == "loop" and c.shared:
            out += c.children
        out += _shared_steps(c)
    return out


def _loops(graph: Graph, s: Scope) -> None:
    """Name what iterations rebind and decide whether a loop can run as a Python loop."""
    for c in s.children:
        _loops(graph, c)
    if s.kind != "loop":
        return
    record = next((r for r in graph.repeats if r[0] == s.path), None)
    its = s.children
    if record is None or not its:
        return
    rebinds = record[3]
    for it, rebound in zip(its, rebinds):
        out_names = {(p.node, p.index): name for name, _, p in rebound}
        in_names = {(p.node, p.index): name for name, p, _ in rebound if p is not None}
        it.outputs = [(out_names.get((p.node, p.index)), p) for _, p in it.outputs]
        it.inputs = [(in_names.get((p.node, p.index)), p) for _, p in it.inputs]
        it.outputs.sort(key=lambda o: (o[0] is None, o[0] or "", o[1].node))
    readers: dict[tuple[int, int], set[int]] = {}
    for n in graph.nodes():
        for p in n.inputs:
            readers.setdefault((p.node, p.index), set()).add(n.id)
    s.loopable = _can_loop(its, readers)
    if s.loopable:
        s.carried = [name for name, _ in its[0].outputs]


def _can_loop(its: list[Scope], readers: dict[tuple[int, int], set[int]]) -> bool:
    """Iterations run as ``for layer in layers: a, b = layer(a, b, c)`` when each returns
    the same named values, each reads the previous one's under the same names (or the same
    value from outside the loop), and only the last one's values are read after the loop."""
    first = its[0]
    names = [n for n, _ in first.outputs]
    if any(n is None for n in names) or len(set(names)) != len(names):
        return False
    for prev, it in zip(its, its[1:]):
        if [n for n, _ in it.outputs] != names:
            return False
        nxt = it.subtree()
        if any(not readers.get((p.node, p.index), set()) <= nxt for _, p in prev.outputs):
            return False                         # read again after the next iteration
        given = {(p.node, p.index): n for n, p in prev.outputs}
        if [n for n, _ in it.inputs] != [n for n, _ in first.inputs]:
            return False
        for (name, p), (_, p0) in zip(it.inputs, first.inputs):
            key = (p.node, p.index)
            if name is None:                     # read from outside the loop: the same value
                if (p.node, p.index) != (p0.node, p0.index):
                    return False
            elif given.get(key) != name:         # a rebound name: the previous iteration's value
                return False
    return True
