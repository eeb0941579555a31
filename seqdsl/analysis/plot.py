"""``--plot``: estimated time against N (log-log) for each distinct mixer of a file under
each of its candidate algorithms, with the points where the best algorithm changes."""

from __future__ import annotations

from pathlib import Path

import sympy

from seqdsl.analysis import mixers
from seqdsl.analysis.select import MACHINES
from seqdsl.ir.graph import OpKind

N_VALUES = [2 ** k for k in range(10, 21)]   # 1K … 1M


def _curves(checked, machine, n_values):
    """{mixer label: {algorithm: [seconds per N]}} for one node per distinct mixer."""
    from seqdsl.api import check

    seen, curves = {}, {}
    for n_value in n_values:
        sizes = {k: v for k, v in checked["sizes"].items()}
        sizes["N"] = n_value
        c = check(checked["program"], checked["entry"], **sizes)
        subs = {}
        for k, v in c.sizes.items():
            subs[sympy.Symbol(k, positive=True, integer=True)] = v
            subs[sympy.Symbol(k, real=True)] = v
        for sym in _free(c.graph):
            subs.setdefault(sympy.Symbol(sym, positive=True, integer=True), 1)
        for sym, value in mixers.TILE_DEFAULTS.items():
            subs.setdefault(sym, value)
        for node in c.graph.nodes(OpKind.MIX):
            label = f"{node.spec.family}: {node.spec.mask}"
            key = seen.setdefault(label, node.name)
            if key != node.name:
                continue
            for cand in mixers.candidates(c.graph, node, subs):
                t = machine.time(cand.forward, subs, cand.steps)
                curves.setdefault(f"{node.name} ({label})", {}).setdefault(cand.algorithm, []).append(t)
    return curves


def _free(graph) -> set[str]:
    names = set()
    for n in graph.nodes():
        for t in n.outs:
            for d in t.shape:
                names |= {str(s) for s in sympy.sympify(d).free_symbols}
    return names


def plot_costs(source, entry, sizes: dict, out: Path, machine: str = "cpu", n_values=None) -> int:
    """Draw the curves to ``out``; return the number of crossover points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqdsl.api import parse

    n_values = n_values or N_VALUES
    prog = parse(source)
    if "N" not in prog.dims:
        from seqdsl.errors import SeqError
        raise SeqError("--plot varies the sequence length N, but the file declares no dim N")
    base = {k: v for k, v in sizes.items() if k != "N"}
    curves = _curves({"program": prog, "entry": entry, "sizes": base}, MACHINES[machine], n_values)
    rows = max(1, len(curves))
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.6 * rows), squeeze=False)
    crossings = 0
    for ax, (label, algos) in zip(axes[:, 0], curves.items()):
        for algo, times in algos.items():
            ax.loglog(n_values, times, marker="o", markersize=3, label=algo)
        best = [min(algos, key=lambda a: algos[a][i]) for i in range(len(n_values))]
        for i in range(1, len(n_values)):
            if best[i] != best[i - 1]:
                crossings += 1
                x = (n_values[i - 1] * n_values[i]) ** 0.5
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
                ax.annotate(f"{best[i - 1]} → {best[i]}", (x, ax.get_ylim()[0]), rotation=90,
                            fontsize=7, va="bottom", ha="right", color="dimgrey")
        ax.set_title(label if len(label) < 90 else label[:87] + "…", fontsize=9)
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(f"estimated seconds ({machine})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    if not curves:
        axes[0, 0].text(0.5, 0.5, "no mixers in this entry", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return crossings
