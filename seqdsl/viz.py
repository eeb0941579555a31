"""Drawing the layer graph: DOT text, and SVG/PNG through Graphviz or matplotlib.

One box per IR node, labelled with its layer path, op kind and output shape; token
mixers (MIX nodes) stand out and show their family and mask; edges carry the input role;
each top-level layer (``layers.3.layer``) is a cluster. Weights (PARAM/BUFFER nodes) are
left out unless asked for.

Every label is built from names and strings that come from user files, so every string
that reaches the DOT text goes through :func:`dot_quote` (no raw user text is ever
written unquoted), and matplotlib text is drawn with mathtext off.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from seqdsl.errors import SeqError
from seqdsl.fold import Folding, fold_graph, relative, unit_of
from seqdsl.ir.graph import Graph, Node, OpKind

FORMATS = (".dot", ".gv", ".svg", ".png")

# One colour per family of op kinds (by their names, so that a kind added to or removed
# from OpKind never breaks drawing: an unlisted kind is drawn white). MIX nodes are the
# ones to find at a glance.
_GROUPS: dict[str, tuple[tuple[str, ...], str]] = {
    "io": (("input", "output"), "#c8e6c9"),
    "weight": (("param", "buffer"), "#e0e0e0"),
    "dense": (("linear", "mlp", "embed", "seq_project", "matmul"), "#bbdefb"),
    "norm": (("norm",), "#e1bee7"),
    "local": (("conv1d", "pool"), "#b2dfdb"),
    "elementwise": (("unary", "binary", "softmax", "reduce", "dropout"), "#fff9c4"),
    "shape": (("rearrange", "slice", "concat", "get", "gather"), "#f5f5f5"),
    "routing": (("hash", "sort_blocks", "topk", "positions"), "#b3e5fc"),
    "nested": (("moe", "fixed_point", "recurrent"), "#f8bbd0"),
    "mixer": (("mix",), "#ffcc80"),
}
COLOURS: dict[str, str] = {k: colour for kinds, colour in _GROUPS.values() for k in kinds}
MIX_BORDER = "#e65100"
OUTPUT_COLOUR = COLOURS["output"]
CLUSTER_FILL = "#f3f6fb"
COLLAPSED_COLOUR = "#ffe0b2"     # a layer instance drawn as one box
_HIDDEN = (OpKind.PARAM, OpKind.BUFFER)


# ---- what is drawn (shared by both renderers) ----------------------------------------


@dataclass(frozen=True)
class Box:
    """One drawn box: an IR node (key ``n<id>``) or one of the entry's results (``out<i>``)."""

    key: str
    lines: tuple[str, ...]
    colour: str
    mixer: bool = False


@dataclass(frozen=True)
class Drawing:
    """What both renderers draw: boxes in topological order, edges, clusters.

    ``loops`` are the edges that go back up a folded drawing (the last node of a folded
    layer feeding the first nodes of the next iteration): dashed, and left out of the
    layout so that it stays top to bottom."""

    name: str
    boxes: dict[str, Box]
    edges: list[tuple[str, str, str]]        # (from key, to key, role)
    clusters: dict[str, tuple[str, list[str]]]  # layer path -> (title, box keys)
    loops: list[tuple[str, str, str]] = field(default_factory=list)
    # Not drawn: what follows the last iteration of a folded layer stays below its cluster.
    after: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what was folded or collapsed, for the user


def _lines(n: Node, name: str | None = None) -> tuple[str, ...]:
    shapes = ", ".join(str(t) for t in n.outs)
    name = n.name if name is None else name
    if n.kind == OpKind.MIX and n.spec is not None:
        return (name, f"mix: {n.spec.family}", f"mask: {n.spec.mask}", shapes)
    kind = n.kind.value
    detail = n.attr("fn") or n.attr("op")
    if detail is not None and n.kind in (OpKind.NORM, OpKind.UNARY, OpKind.BINARY, OpKind.REDUCE):
        kind = f"{kind} {detail}"
    pattern = n.attr("pattern")
    if isinstance(pattern, str):        # rearrange: the user's string, escaped on output
        kind = f"{kind} {pattern}"
    lines = [name, kind, shapes]
    body = n.attr("body")
    if isinstance(body, Graph):
        lines.append(f"body: {body.name} ({len(body)} nodes)")
    return tuple(lines)


def _top_layers(g: Graph) -> dict[str, str]:
    """The outermost layer instances: path -> title (``block layer``)."""
    paths = {path: f"{kind} {definition}" for path, kind, definition in g.layers}
    return {p: t for p, t in paths.items()
            if not any(p != q and p.startswith(q + ".") for q in paths)}


_REPEAT = re.compile(r"^([^.]+\.\d+)\.")


def _cluster_of(name: str, tops: dict[str, str]) -> str | None:
    for path in tops:
        if name == path or name.startswith(path + "."):
            return path
    m = _REPEAT.match(name)      # a repeat body that calls primitives only: "layers.3.x"
    return m.group(1) if m else None


# A drawing is kept within a page at the default settings: ~26 inches a side (2,900 px
# at the 110 dpi of a PNG). Folding repetition is enough for most models; past the page,
# the largest nested layer instances (mixers inside blocks first) are drawn as one box.
PAGE_INCHES = 26.0


def drawing(g: Graph, with_params: bool = False, expand: bool = False) -> Drawing:
    """The boxes, edges and clusters to draw for ``g``.

    Unless ``expand``, identical iterations of a repeat (:mod:`seqdsl.fold`) are drawn once,
    as one cluster titled with their index set and count (``layers.{0,1,3..11}.h3_block
    ×10``), the edges of the other iterations drawn between the boxes that stand for them
    (those going back up as ``loops``); then, while the drawing is larger than a page,
    layer instances are collapsed into one box each, the deepest and largest first."""
    if expand:
        return _build(g, with_params, Folding(), {}, set())
    folding, units = fold_graph(g)
    d = _build(g, with_params, folding, units, set())
    hidden_units = {u.path for grp in folding.groups if grp.count > 1 for u in grp.units[1:]}
    paths = [p for p, _, _ in g.layers if unit_of(p) is None or unit_of(p).path not in hidden_units]
    inside = {p: [n for n in g.nodes() if n.name.startswith(p + ".") and n.kind not in _HIDDEN] for p in paths}
    # helpers before mixers (the mix nodes are what a reader looks for), nested before
    # top-level, large before small
    candidates = sorted((p for p in paths if len(inside[p]) > 1),
                        key=lambda p: (any(n.kind == OpKind.MIX for n in inside[p]),
                                       -sum(1 for q in paths if p.startswith(q + ".")), -len(inside[p]), p))
    definition = {p: (kind, name) for p, kind, name in g.layers}
    from seqdsl.viz_matplotlib import extent  # the page size is judged on its layout

    collapsed: set[str] = set()
    for path in candidates:
        if max(extent(d)) <= PAGE_INCHES:
            break
        if path in collapsed or any(path.startswith(c + ".") for c in collapsed):
            continue
        # with its twins (the same definition called beside it), so that they look alike
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        collapsed |= {p for p in candidates if definition[p] == definition[path]
                      and (p.rsplit(".", 1)[0] if "." in p else "") == parent}
        d = _build(g, with_params, folding, units, collapsed)
    if folding.folds:
        folded = [grp for grp in folding.groups if grp.count > 1]
        d.notes.append(f"{sum(grp.count for grp in folded)} repeat iterations drawn as {len(folded)} (identical ones "
                       "once; --expand draws every one)")
    if collapsed:
        d.notes.append(f"{len(collapsed)} layer instance(s) drawn as one box each to fit a page")
    return d


def _build(g: Graph, with_params: bool, folding: Folding, units: dict, collapsed: set[str]) -> Drawing:
    tops = _top_layers(g)
    titles = {path: f"{kind} {definition}" for path, kind, definition in g.layers}
    stands_for: dict[int, int] = {}          # node id -> the id of the box that shows it
    group_titles: dict[str, str] = {}       # the first iteration of a folded group -> its title
    solo_instance: dict[str, str] = {}      # the same -> its one layer instance (h3_block), if one
    for group in folding.groups:
        if group.count == 1:
            continue
        first = units[group.first]
        for unit in group.units[1:]:
            stands_for.update((a.id, b.id) for a, b in zip(units[unit], first, strict=True))
        # the outermost layer instances inside the iteration (under a top-level one too:
        # a repeat inside an encoder block)
        within = [p for p in titles if p.startswith(group.first.path + ".")]
        inside = [(p, titles[p]) for p in within if not any(p.startswith(q + ".") for q in within)]
        if len(inside) == 1:
            solo_instance[group.first.path] = relative(inside[0][0], group.first)
            title = f"{group.show(inside[0][0])} ×{group.count}: {inside[0][1]}"
        else:
            what = ", ".join(f"{relative(p, group.first)} ({t})" for p, t in inside)
            title = f"{group.label} ×{group.count}" + (f": {what}" if what else "")
        group_titles[group.first.path] = title + (f" ({group.note})" if group.note else "")
    # A collapsed instance is one box, keyed by its last node (whatever reads it comes later).
    collapsed = {p for p in collapsed if not any(p.startswith(q + ".") for q in collapsed)}
    members: dict[str, list[Node]] = {p: [] for p in collapsed}
    for n in g.nodes():
        if n.id not in stands_for:
            for p in collapsed:
                if n.name.startswith(p + "."):
                    members[p].append(n)
    box_of: dict[int, str] = {}
    into: dict[int, int] = {}               # a node of a collapsed instance -> its box
    for p, nodes in members.items():
        if nodes:
            box_of[nodes[-1].id] = p
            into.update((n.id, nodes[-1].id) for n in nodes)
    fold_map = dict(stands_for)
    stands_for = {nid: into.get(fold_map.get(nid, nid), fold_map.get(nid, nid))
                  for nid in {*fold_map, *into} if into.get(fold_map.get(nid, nid), fold_map.get(nid, nid)) != nid}

    def internal(a: Node, b: Node) -> bool:
        """An edge between two nodes of one collapsed instance, in one iteration."""
        a_id, b_id = fold_map.get(a.id, a.id), fold_map.get(b.id, b.id)
        return a_id in into and into[a_id] == into.get(b_id) and unit_of(a.name) == unit_of(b.name)

    def hidden(nid: int) -> bool:
        return g.node(nid).kind in _HIDDEN and not with_params and nid not in box_of

    boxes: dict[str, Box] = {}
    clusters: dict[str, tuple[str, list[str]]] = {}
    edges: dict[tuple[str, str, str], None] = {}
    loops: dict[tuple[str, str, str], None] = {}
    for n in g.nodes():
        if hidden(n.id):
            continue
        dst = stands_for.get(n.id, n.id)
        key = f"n{dst}"
        for p in n.inputs:
            if hidden(p.node):
                continue
            src = stands_for.get(p.node, p.node)
            if internal(g.node(p.node), n):
                continue
            role = p.role if not p.index else f"{p.role} [{p.index}]"
            (edges if src < dst else loops)[(f"n{src}", key, role)] = None
        if n.id in stands_for:
            continue
        found = folding.group_of(n.name)
        folded = found is not None and found[1].count > 1
        name = box_of.get(n.id, n.name)
        if folded:                           # the cluster's title says where: the rest of the path
            name = relative(name, found[0]) or name
            solo = solo_instance.get(found[0].path)
            if solo is not None and name.startswith(solo + "."):
                name = name[len(solo) + 1:]
        if n.id in box_of:
            inside = [m for m in members[box_of[n.id]] if m.kind not in _HIDDEN or with_params]
            lines = (name, titles[box_of[n.id]], f"{len(inside)} nodes drawn as one", ", ".join(str(t) for t in n.outs))
            boxes[key] = Box(key, lines, COLLAPSED_COLOUR, any(m.kind == OpKind.MIX for m in inside))
        else:
            boxes[key] = Box(key, _lines(n, name), COLOURS.get(n.kind.value, "#ffffff"), n.kind == OpKind.MIX)
        if folded:
            unit = found[0]
            clusters.setdefault(unit.path, (group_titles[unit.path], []))[1].append(key)
            continue
        path = _cluster_of(n.name, tops)
        if path is not None:
            title = f"{path}: {tops[path]}" if path in tops else path
            clusters.setdefault(path, (title, []))[1].append(key)
    for i, p in enumerate(g.outputs):
        key = f"out{i}"
        label = "output" if len(g.outputs) == 1 else f"output {i}"
        boxes[key] = Box(key, (label, str(g.type_of(p))), OUTPUT_COLOUR)
        edges[(f"n{stands_for.get(p.node, p.node)}", key, "" if not p.index else f"[{p.index}]")] = None
    after: list[tuple[str, str]] = []
    for group in folding.groups:
        if group.count > 1:
            end = max(n.id for u in group.units for n in units[u])
            last = f"n{stands_for.get(units[group.first][-1].id, units[group.first][-1].id)}"
            after += [(last, key) for key in boxes if key.startswith("n") and int(key[1:]) > end and last in boxes
                      and (last, key) not in {(a, b) for a, b, _ in edges}]
    return Drawing(g.name, boxes, list(edges), clusters, list(loops), after)


# ---- DOT ------------------------------------------------------------------------------


def dot_quote(text: str) -> str:
    """``text`` as a DOT double-quoted string that shows exactly ``text``.

    Backslashes and quotes are escaped (so no escape sequence of the user's survives and
    the string cannot end early); line breaks become DOT's ``\\n``; other control
    characters become spaces. ``<``, ``>``, ``{``, ``}`` and ``|`` are plain characters
    inside a quoted, non-record, non-HTML label.
    """
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch in "\n\r":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(" ")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _label(lines: tuple[str, ...]) -> str:
    # Joined after quoting each line, so a line break the user wrote stays a line break
    # and a backslash the user wrote stays a backslash.
    return '"' + "\\n".join(dot_quote(line)[1:-1] for line in lines) + '"'


def to_dot(graph: Graph, with_params: bool = False, expand: bool = False) -> str:
    """The layer graph as Graphviz DOT text (top to bottom, one cluster per top-level layer;
    identical repeat iterations folded unless ``expand``)."""
    return _dot(drawing(graph, with_params, expand))


def _dot(d: Drawing) -> str:
    out = [
        f"digraph {dot_quote(d.name)} {{",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.25, ranksep=0.35];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=9, color="#607080"];',
        '  edge [fontname="Helvetica", fontsize=8, color="#5a6470", fontcolor="#3a4450", arrowsize=0.6];',
    ]
    in_cluster: set[str] = set()
    for i, (title, keys) in enumerate(d.clusters.values()):
        out.append(f'  subgraph "cluster_{i}" {{')
        out.append(f'    graph [label={dot_quote(title)}, style="rounded,filled", fillcolor="{CLUSTER_FILL}", '
                   'color="#9aa8bd", labeljust=l];')
        for key in keys:
            out.append(f"    {_dot_node(d.boxes[key])}")
        out.append("  }")
        in_cluster.update(keys)
    for key, box in d.boxes.items():
        if key not in in_cluster:
            out.append(f"  {_dot_node(box)}")
    for src, dst, role in d.edges:
        attrs = f" [label={dot_quote(role)}]" if role else ""
        out.append(f"  {src} -> {dst}{attrs};")
    for src, dst in d.after:
        out.append(f"  {src} -> {dst} [style=invis];")
    for src, dst, role in d.loops:      # into the next iteration: no say in the ranking
        out.append(f"  {src} -> {dst} [label={dot_quote(f'{role} (next layer)')}, style=dashed, constraint=false];")
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_node(box: Box) -> str:
    attrs = f'label={_label(box.lines)}, fillcolor="{box.colour}"'
    if box.mixer:
        attrs += f', color="{MIX_BORDER}", penwidth=2.5, fontsize=10'
    if box.key.startswith("out"):
        attrs += ", shape=oval"
    return f"{box.key} [{attrs}];"


# ---- files ----------------------------------------------------------------------------


def write_graph(graph: Graph, path: str | Path, with_params: bool = False, renderer: str = "auto",
                expand: bool = False) -> str:
    """Write the graph to ``path`` (.dot/.gv text, or a .svg/.png picture).

    Pictures use Graphviz's ``dot`` when it is on PATH (``renderer="auto"``), matplotlib
    otherwise; ``renderer`` can force ``"dot"`` or ``"matplotlib"``. Returns a short note
    saying which renderer drew the file, for the CLI to print.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SeqError(f"graph: cannot write {path.name!r}: the output must end in " + ", ".join(FORMATS))
    if renderer not in ("auto", "dot", "matplotlib"):
        raise ValueError(f"unknown renderer {renderer!r}")
    d = drawing(graph, with_params, expand)
    text = _dot(d)
    done = "".join(f"; {note}" for note in d.notes)
    if suffix in (".dot", ".gv"):
        path.write_text(text)
        return "DOT text" + done
    dot = shutil.which("dot")
    if renderer == "dot" and dot is None:
        raise SeqError("graph: Graphviz 'dot' is not on PATH")
    why = "Graphviz 'dot' is not on PATH"
    if dot is not None and renderer != "matplotlib":
        try:
            proc = subprocess.run([dot, f"-T{suffix[1:]}", "-o", str(path)], input=text, capture_output=True,
                                  text=True, timeout=600, check=False)
            if proc.returncode == 0:
                return f"drawn with Graphviz ({dot})" + done
            why = "Graphviz dot failed: " + (proc.stderr.strip().splitlines() or ["no message"])[-1]
        except subprocess.TimeoutExpired:
            why = "Graphviz dot took more than 10 minutes"
        if renderer == "dot":
            raise SeqError(f"graph: {why}")
    from seqdsl.viz_matplotlib import draw

    notes = ([] if renderer == "matplotlib" else [why]) + draw(d, path)
    if len(d.boxes) > 300:
        notes.append(f"{len(d.boxes)} boxes: --entry draws one block alone")
    return "drawn with matplotlib" + (": " + "; ".join(notes) if notes else "") + done
