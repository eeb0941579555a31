"""Folding repetition for the views (``check``, the ``analyze complexity`` table, ``graph``).

A ``repeat`` unrolls into iterations whose paths are ``<prefix>layers.<i>`` (``layers_1``
for a second repeat in the same scope). Two iterations of the same repeat are *identical*
when what a view shows of them is the same once the iteration's own path is taken out:
for the graph and ``check``, the same nodes in the same order with the same kinds,
attributes, output shapes and wiring (inputs from outside the iteration count as
"outside", so the first layer reading the embedding and the next reading the previous
layer do not differ); for the cost table, the same rows. Identical iterations form a
:class:`Group`, written ``layers.{0,1,3..11}`` (runs of three or more as ``a..b``); the
first iteration stands for the group. A hybrid (``if i in [2, 6]`` picking another block)
gives one group per block; a random seed that differs by layer (BigBird's
``seed = i``) does not split a group, and the group says so.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from seqdsl.ir.graph import Graph, Node

_ITERATION = re.compile(r"layers(?:_\d+)?")
_SEED = re.compile(r"\bseed=\d+")


def index_set(indices: Iterable[int]) -> str:
    """``{0,1,3..11}``: sorted; a run of three or more consecutive indices as ``a..b``, a run
    of four or more with a constant step as ``a,b,…,c`` (every other layer: ``{0,2,…,126}``;
    never ``a,b..c``, which would read as ``a`` and the range ``b..c``). When the indices
    missing from their range are the shorter list, the set is written as the range minus
    them: ``{0..126∖3,7,…,123}`` (three local layers, then one strided)."""
    xs = sorted(set(indices))
    direct = _runs(xs)
    have = set(xs)
    missing = [i for i in range(xs[0], xs[-1] + 1) if i not in have] if xs else []
    if missing:
        other = f"{xs[0]}..{xs[-1]}∖{_runs(missing)}"
        if len(other) + 8 < len(direct):
            return "{" + other + "}"
    return "{" + direct + "}"


def _runs(xs: list[int]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        step = xs[i + 1] - xs[i] if i + 1 < len(xs) else 0
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        if step == 1 and j - i >= 2:
            parts.append(f"{xs[i]}..{xs[j]}")
        elif step > 1 and j - i >= 3:
            parts.append(f"{xs[i]},{xs[i + 1]},…,{xs[j]}")
        else:
            parts.append(str(xs[i]))
            j = i
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Unit:
    """One iteration of a repeat: ``path`` = ``layers.3``, ``template`` = ``layers.{}``."""

    path: str
    template: str
    index: int


def unit_of(name: str) -> Unit | None:
    """The outermost repeat iteration that ``name`` (a node or layer path) lies in."""
    parts = name.split("/", 1)[0].split(".")
    for j in range(1, len(parts)):
        if parts[j].isdigit() and _ITERATION.fullmatch(parts[j - 1]):
            return Unit(".".join(parts[:j + 1]), ".".join([*parts[:j], "{}"]), int(parts[j]))
    return None


def relative(name: str, unit: Unit) -> str:
    """``name`` without its iteration's path: ``h3_block.h3.y``."""
    return name[len(unit.path) + 1:] if name.startswith(unit.path + ".") else ""


@dataclass
class Group:
    """Identical iterations of one repeat; ``units[0]`` stands for all of them."""

    template: str
    units: list[Unit]
    note: str = ""                     # e.g. "random seeds differ"

    @property
    def count(self) -> int:
        return len(self.units)

    @property
    def first(self) -> Unit:
        return self.units[0]

    @property
    def indices(self) -> list[int]:
        return [u.index for u in self.units]

    @property
    def label(self) -> str:
        """``layers.{0,1,3..11}`` (a single iteration keeps its plain path)."""
        return self.first.path if self.count == 1 else self.template.format(index_set(self.indices))

    def show(self, name: str) -> str:
        """A path inside the first iteration, written for the whole group."""
        rest = relative(name, self.first)
        return self.label + ("." + rest if rest else "")


@dataclass
class Folding:
    """The groups of a graph or table, and which group each iteration belongs to."""

    groups: list[Group] = field(default_factory=list)
    by_unit: dict[str, Group] = field(default_factory=dict)

    def group_of(self, name: str) -> tuple[Unit, Group] | None:
        unit = unit_of(name)
        if unit is None or unit.path not in self.by_unit:
            return None
        return unit, self.by_unit[unit.path]

    @property
    def folds(self) -> bool:
        """Whether folding hides anything (some group has two or more iterations)."""
        return any(g.count > 1 for g in self.groups)


def fold(keys: dict[Unit, tuple[Hashable, Hashable]]) -> Folding:
    """Group iterations (in the order given) by ``(loose, strict)`` keys: equal loose keys
    fold; a group whose strict keys differ says that its random seeds differ."""
    out = Folding()
    index: dict[tuple, Group] = {}
    strict: dict[int, set] = {}
    for unit, (loose, exact) in keys.items():
        g = index.get((unit.template, loose))
        if g is None:
            g = index[(unit.template, loose)] = Group(unit.template, [])
            out.groups.append(g)
        g.units.append(unit)
        strict.setdefault(id(g), set()).add(exact)
        out.by_unit[unit.path] = g
    for g in out.groups:
        if len(strict[id(g)]) > 1:
            g.note = "random seeds differ"
    return out


# ---- the graph -------------------------------------------------------------------------


def units_of_graph(g: Graph) -> dict[Unit, list[Node]]:
    """Each repeat iteration of ``g`` with its nodes in topological order."""
    out: dict[Unit, list[Node]] = {}
    for n in g.nodes():
        unit = unit_of(n.name)
        if unit is not None:
            out.setdefault(unit, []).append(n)
    return out


def _attr_text(value, prefix: str) -> str:
    if isinstance(value, Graph):
        return "graph(" + repr(body_signature(value)) + ")"
    text = repr(value)
    return text.replace(prefix + ".", "@.") if prefix else text


def body_signature(g: Graph, prefix: str = "") -> tuple:
    """The structure of a whole (nested) graph: what a MoE expert or DEQ cell is."""
    return tuple(_node_key(g, n, prefix, {m.id: i for i, m in enumerate(g.nodes())}) for n in g.nodes())


def _node_key(g: Graph, n: Node, prefix: str, inside: dict[int, int]) -> tuple:
    attrs = tuple((k, _attr_text(v, prefix)) for k, v in n.attrs)
    ins = tuple((p.role, inside.get(p.node, -1), p.index) for p in n.inputs)
    name = n.name[len(prefix) + 1:] if prefix and n.name.startswith(prefix + ".") else n.name
    return (name, n.kind.value, attrs, tuple(str(t) for t in n.outs), ins)


def fold_graph(g: Graph) -> tuple[Folding, dict[Unit, list[Node]]]:
    """Group the repeat iterations of ``g`` by structure (see the module docstring)."""
    units = units_of_graph(g)
    keys = {}
    for unit, nodes in units.items():
        inside = {n.id: i for i, n in enumerate(nodes)}
        exact = tuple(_node_key(g, n, unit.path, inside) for n in nodes)
        loose = tuple(_mask_seeds(k) for k in exact)
        keys[unit] = (loose, exact)
    return fold(keys), units


def _mask_seeds(key: tuple) -> tuple:
    name, kind, attrs, outs, ins = key
    return name, kind, tuple((k, "#" if k == "seed" else _SEED.sub("seed=#", v)) for k, v in attrs), outs, ins


# ---- text ------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+")


def merge_lines(lines: list[str]) -> str | None:
    """One line for several that differ only in numbers, each differing number written as
    the set of its values (``seed={0..11}``); None when they differ in anything else."""
    split = [_NUMBER.split(line) for line in lines]
    if any(s != split[0] for s in split):
        return None
    numbers = [_NUMBER.findall(line) for line in lines]
    out = [split[0][0]]
    for i, text in enumerate(split[0][1:]):
        values = {int(ns[i]) for ns in numbers}
        out.append(numbers[0][i] if len(values) == 1 else index_set(values))
        out.append(text)
    return "".join(out)
