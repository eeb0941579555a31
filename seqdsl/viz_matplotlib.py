"""The matplotlib renderer of `seqdsl graph` (used when Graphviz is absent, or asked for)."""

from __future__ import annotations

import textwrap
from itertools import pairwise
from pathlib import Path

import networkx as nx

from seqdsl.viz import _GROUPS, CLUSTER_FILL, MIX_BORDER, Drawing

# ---- matplotlib -----------------------------------------------------------------------
# A small layered (Sugiyama) layout: rows by topological generation, a waypoint on every
# row that a long edge crosses, a few barycentre sweeps to order each row, then x
# positions that pull every box and waypoint towards its neighbours without overlaps.
# Long (residual) edges get their own lane instead of running behind the boxes.

_WRAP = 34          # characters per label line
_BOX_W = 2.2        # inches
_GAP = 0.45         # inches between boxes of a row
_LANE = 0.3         # inches taken by a long edge passing through a row
_ROW_H = 1.05       # inches between rows
_MAX_SIDE = 32000   # pixels: Agg draws at most 2^16 a side, and viewers choke well before
_MAX_PIXELS = 120_000_000
_LOOP = 0.2         # inches between the lanes of the edges into the next iteration


def extent(d: Drawing) -> tuple[float, float]:
    """About the width and height in inches of the drawing (a lower bound of the width:
    the widest row, boxes and passing edges side by side). Graphviz's is close."""
    row = _rows(d)
    across: dict[int, float] = {}
    for r in row.values():
        across[r] = across.get(r, 0.0) + _BOX_W + _GAP
    for src, dst, _ in d.edges:
        for r in range(row[src] + 1, row[dst]):
            across[r] = across.get(r, 0.0) + _LANE
    height = max(row.values(), default=0) * _ROW_H + 2 * _ROW_H + 0.5
    return max(across.values(), default=0.0) + 1.2 + _LOOP * len(d.loops), height


def _rows(d: Drawing) -> dict[str, int]:
    """Rows by topological generation; a source (input, weight) sits just above its first reader."""
    g = nx.DiGraph()
    g.add_nodes_from(d.boxes)
    g.add_edges_from((s, t) for s, t, _ in d.edges)
    g.add_edges_from(d.after)
    row: dict[str, int] = {}
    for k in nx.topological_sort(g):
        preds = list(g.predecessors(k))
        row[k] = 1 + max(row[p] for p in preds) if preds else 0
    for k in g.nodes:
        succ = list(g.successors(k))
        if not list(g.predecessors(k)) and succ:
            row[k] = max(0, min(row[s] for s in succ) - 1)
    return row


def _place(want: list[float], widths: list[float], weights: list[float]) -> list[float]:
    """Positions in this order, at least half-widths apart, closest to ``want`` in weighted
    least squares: isotonic regression (pool adjacent violators) on the offset targets."""
    offset = [0.0]
    for a, b in pairwise(widths):
        offset.append(offset[-1] + (a + b) / 2)
    blocks: list[list[float]] = []            # [weighted sum of targets, total weight, count]
    for w, o, wt in zip(want, offset, weights, strict=True):
        blocks.append([(w - o) * wt, wt, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, weight, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += weight
            blocks[-1][2] += count
    fitted = [total / weight for total, weight, count in blocks for _ in range(int(count))]
    return [y + o for y, o in zip(fitted, offset, strict=True)]


def _layout(d: Drawing) -> tuple[dict[str, int], dict[str, float], list[list[str]]]:
    """Rows, x positions (inches) of boxes and waypoints, and each edge's route."""
    row = _rows(d)
    rows: dict[int, list[str]] = {}
    for k in d.boxes:                       # d.boxes is in topological order
        rows.setdefault(row[k], []).append(k)
    up: dict[str, list[str]] = {k: [] for k in d.boxes}
    down: dict[str, list[str]] = {k: [] for k in d.boxes}
    routes: list[list[str]] = []
    for i, (src, dst, _) in enumerate(d.edges):
        route = [src]
        for r in range(row[src] + 1, row[dst]):
            way = f"~{i}.{r}"
            row[way] = r
            rows.setdefault(r, []).append(way)
            up[way], down[way] = [], []
            route.append(way)
        route.append(dst)
        for a, b in pairwise(route):
            down[a].append(b)
            up[b].append(a)
        routes.append(route)

    levels = sorted(rows)
    index = {k: i for keys in rows.values() for i, k in enumerate(keys)}
    for sweep in range(8):
        nbrs = up if sweep % 2 == 0 else down
        for r in levels if sweep % 2 == 0 else levels[::-1]:
            keys = rows[r]
            bary = {k: sum(index[n] for n in nbrs[k]) / len(nbrs[k]) if nbrs[k] else index[k] for k in keys}
            keys.sort(key=lambda k: bary[k])
            index.update((k, i) for i, k in enumerate(keys))

    def width(k: str) -> float:
        return _BOX_W + _GAP if k in d.boxes else _LANE

    sources = {k for k in d.boxes if not up[k]}
    x: dict[str, float] = {}
    for keys in rows.values():
        x.update(zip(keys, _place([0.0] * len(keys), [width(k) for k in keys], [1.0] * len(keys)), strict=True))
    for sweep in range(12):
        for r in levels if sweep % 2 == 0 else levels[::-1]:
            keys = rows[r]
            want = []
            for k in keys:
                near = (up[k] if sweep % 2 == 0 else down[k]) if sweep < 10 else up[k] + down[k]
                # Weights and inputs follow their readers, not the other way round (else
                # each layer's weights would push the chain sideways, layer after layer).
                near = [n for n in near if n not in sources] or near
                want.append(sum(x[n] for n in near) / len(near) if near else x[k])
            weights = [0.05 if k in sources else 1.0 for k in keys]
            x.update(zip(keys, _place(want, [width(k) for k in keys], weights), strict=True))
    return row, x, routes


def _on_curve(p0, p1, p2, p3, above: float) -> tuple[float, float]:
    """The point of the cubic Bézier p0..p3 (going down) ``above`` inches over its end."""
    def at(t: float) -> tuple[float, float]:
        c = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3)
        return (sum(w * p[0] for w, p in zip(c, (p0, p1, p2, p3), strict=True)),
                sum(w * p[1] for w, p in zip(c, (p0, p1, p2, p3), strict=True)))

    target = min(p3[1] + above, (p0[1] + p3[1]) / 2)
    lo, hi = 0.0, 1.0
    for _ in range(30):                     # y decreases along the curve: bisect for y = target
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(mid)[1] > target else (lo, mid)
    return at((lo + hi) / 2)


def draw(d: Drawing, path: Path) -> list[str]:
    """Draw ``d`` into ``path`` (.svg or .png); returns notes for the user (a PNG too big
    for its pixels is drawn at a lower resolution)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MPath

    row, x, routes = _layout(d)
    half_w, half_h = _BOX_W / 2, _ROW_H * 0.36
    pos = {k: (x[k], -row[k] * _ROW_H) for k in x}
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    loops = list(dict.fromkeys((src, dst) for src, dst, _ in d.loops))
    width = max(xs) - min(xs) + _BOX_W + 1.2 + _LOOP * len(loops)
    height = max(ys) - min(ys) + 2 * _ROW_H + 0.5
    fig = plt.figure(figsize=(max(width, 7.0), max(height, 3.0)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(min(xs) - half_w - 0.6, min(xs) - half_w - 0.6 + max(width, 7.0))
    ax.set_ylim(min(ys) - _ROW_H, max(ys) + _ROW_H + 0.5)     # room for the legend on top
    ax.set_axis_off()

    for title, keys in d.clusters.values():
        cx = [pos[k][0] for k in keys]
        cy = [pos[k][1] for k in keys]
        x0, x1 = min(cx) - half_w - 0.12, max(cx) + half_w + 0.12
        y0, y1 = min(cy) - half_h - 0.04, max(cy) + half_h + 0.22
        ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0,rounding_size=0.12",
                                    fc=CLUSTER_FILL, ec="#9aa8bd", lw=1.0, zorder=0))
        ax.text(x0 + 0.1, y1 - 0.04, title, ha="left", va="top", fontsize=8, color="#34435a",
                fontweight="bold", parse_math=False, zorder=5,
                bbox={"boxstyle": "round,pad=0.1", "fc": CLUSTER_FILL, "ec": "none", "alpha": 0.9})

    # Edges enter the top of their reader at ports spread in the order they arrive from,
    # so that they do not cross there and their role labels stay apart.
    port_x: dict[int, float] = {}
    incoming: dict[str, list[int]] = {}
    for i, route in enumerate(routes):
        incoming.setdefault(route[-1], []).append(i)
    for dst, idx in incoming.items():
        idx.sort(key=lambda i: (pos[routes[i][-2]][0], i))
        step = min(0.5, 2 * half_w / (len(idx) + 1))
        for j, i in enumerate(idx):
            port_x[i] = pos[dst][0] + (j - (len(idx) - 1) / 2) * step

    for i, ((_, _, role), route) in enumerate(zip(d.edges, routes, strict=True)):
        points = [(pos[route[0]][0], pos[route[0]][1] - half_h)]
        for way in route[1:-1]:              # straight down through the rows it crosses
            points += [(pos[way][0], pos[way][1] + half_h), (pos[way][0], pos[way][1] - half_h)]
        points.append((port_x[i], pos[route[-1]][1] + half_h))
        # Between rows an S-curve that leaves and enters vertically; within rows a line.
        verts, codes = [points[0]], [MPath.MOVETO]
        for j in range(1, len(points)):
            (ax_, ay), (bx_, by_) = points[j - 1], points[j]
            if j % 2:
                mid = (ay + by_) / 2
                verts += [(ax_, mid), (bx_, mid), (bx_, by_)]
                codes += [MPath.CURVE4] * 3
            else:
                verts.append((bx_, by_))
                codes.append(MPath.LINETO)
        ax.add_patch(FancyArrowPatch(path=MPath(verts, codes), arrowstyle="-|>", mutation_scale=9,
                                     color="#5a6470", lw=0.8, shrinkA=0, shrinkB=1, zorder=2))
        if role:
            ax.text(*_on_curve(*verts[-4:], above=0.13), role, fontsize=6.5, color="#2d3a4a",
                    ha="center", va="center", parse_math=False, zorder=5,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})

    # Edges into the next iteration of a folded layer go back up: out of the right side of
    # their source, up a lane right of everything, into the right side of their reader.
    lane0 = max(xs) + half_w + 0.3
    labelled: set[str] = set()
    for i, (src, dst) in enumerate(loops):
        lane = lane0 + _LOOP * i
        (sx, sy), (tx, ty) = pos[src], pos[dst]
        verts = [(sx + half_w, sy), (lane, sy), (lane, ty), (tx + half_w, ty)]
        ax.add_patch(FancyArrowPatch(path=MPath(verts, [MPath.MOVETO] + [MPath.LINETO] * 3), arrowstyle="-|>",
                                     mutation_scale=9, color="#8a6d3b", lw=0.8, linestyle=(0, (4, 3)),
                                     shrinkA=0, shrinkB=1, zorder=1.5))
        if src not in labelled:
            labelled.add(src)
            ax.text(lane, (sy + ty) / 2, "next layer", rotation=90, fontsize=6.5, color="#8a6d3b", ha="center",
                    va="center", parse_math=False, zorder=5,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})

    for key, box in d.boxes.items():
        bx, by = pos[key]
        lines: list[str] = []
        for line in box.lines:
            lines += textwrap.wrap(line, _WRAP, break_on_hyphens=False) or [""]
        style = "round,pad=0,rounding_size=0.08" if not key.startswith("out") else "round,pad=0,rounding_size=0.3"
        ax.add_patch(FancyBboxPatch((bx - half_w, by - half_h), 2 * half_w, 2 * half_h, boxstyle=style,
                                    fc=box.colour, ec=MIX_BORDER if box.mixer else "#607080",
                                    lw=2.2 if box.mixer else 0.8, zorder=3))
        size = 7.0 if len(lines) <= 3 else max(5.0, 7.0 - 0.6 * (len(lines) - 3))
        ax.text(bx, by + half_h * 0.55, lines[0], ha="center", va="center", fontsize=size, fontweight="bold",
                parse_math=False, zorder=4, color="#111111")
        if len(lines) > 1:
            ax.text(bx, by - half_h * 0.2, "\n".join(lines[1:]), ha="center", va="center", fontsize=size,
                    parse_math=False, zorder=4, color="#222222", linespacing=1.15)

    used = {b.colour for b in d.boxes.values()}
    handles = [Patch(fc=colour, ec=MIX_BORDER if name == "mixer" else "#607080", label=name)
               for name, (_, colour) in _GROUPS.items() if colour in used]
    if handles:
        ax.legend(handles=handles, loc="upper left", ncol=len(handles), fontsize=7, frameon=False,
                  title=d.name, title_fontsize=8, alignment="left")
    fmt = path.suffix[1:].lower()
    dpi, notes = 110.0, []
    if fmt == "png":
        fig_w, fig_h = fig.get_size_inches()
        dpi = min(dpi, _MAX_SIDE / max(fig_w, fig_h), (_MAX_PIXELS / (fig_w * fig_h)) ** 0.5)
        if dpi < 110:
            notes.append(f"PNG scaled down to {dpi:.0f} dpi to stay under {_MAX_PIXELS // 10**6} Mpixels (SVG keeps all)")
    fig.savefig(path, format=fmt, dpi=dpi)
    plt.close(fig)
    return notes
