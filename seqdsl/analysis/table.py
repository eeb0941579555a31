"""The text table of ``seqdsl analyze complexity`` (the JSON is Report.to_dict())."""

from __future__ import annotations

import json
import re

from seqdsl.analysis.report import Report
from seqdsl.fold import Folding, Unit, fold, relative, unit_of

_SAFE_NAME = re.compile(r"Symbol\('([A-Za-z_][A-Za-z0-9_]*)'\)")


def _plain(text: str) -> str:
    """JSON writes N as Symbol('N') so that sympify parses it back; a table shows N."""
    return _SAFE_NAME.sub(r"\1", text)


def _fmt(v: float) -> str:
    if v != v:  # nan
        return "?"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


_W = 40     # the layer column


def _name(text: str, width: int = _W) -> str:
    """The layer column: padded, a name too long for it cut at the front (the leaf stays)."""
    return f"{text:<{width}}" if len(text) <= width else "…" + text[-(width - 1):]


def _numbers(v: dict) -> str:
    return (f"{_fmt(v['flops']):>8} {_fmt(v['matmul_flops']):>8} {_fmt(v['param_count']):>8} "
            f"{_fmt(v['activation_bytes']):>8} {_fmt(v['hbm_bytes']):>8}")


def fold_rows(rows: list[dict]) -> Folding:
    """Group the repeat iterations whose rows (names taken relative to the iteration) are
    the same: same ops, algorithms, candidates, formulas and values."""
    units: dict[Unit, list[str]] = {}
    for row in rows:
        unit = unit_of(row["name"])
        if unit is not None:
            rest = {k: v for k, v in row.items() if k != "name"}
            units.setdefault(unit, []).append(relative(row["name"], unit) + json.dumps(rest, sort_keys=True))
    return fold({u: (tuple(keys), ()) for u, keys in units.items()})


def render(report: Report, formulas: bool = True, mixers_only: bool = False, expand: bool = False) -> str:
    """The table; ``mixers_only`` keeps the mix rows (and the total of everything).

    Identical iterations of a repeat are folded unless ``expand``: one block of rows for
    ``layers.{0,1,3..11}.h3_block ×10`` with the costs of one instance, then its sum for one
    instance and for all of them (:mod:`seqdsl.fold`). The JSON keeps every layer."""
    d = report.to_dict()
    sizes = ", ".join(f"{k}={v}" for k, v in d["sizes"].items())
    lines = [f"model {d['model']} — {d['pass']}, machine model '{d['machine']}'", f"sizes: {sizes}", ""]
    header = f"{'layer':<{_W}} {'op':<22} {'algorithm':<13} {'FLOPs':>8} {'matmul':>8} {'params':>8} " \
             f"{'act. B':>8} {'HBM B':>8}  big-O"
    lines += [header, "-" * len(header)]

    def emit(row: dict, name: str) -> None:
        if mixers_only and not row["op"].startswith("mix/"):
            return
        lines.append(f"{_name(name)} {row['op']:<22} {row['algorithm']:<13} {_numbers(row['values'])}  "
                     f"{row['big_o']['time']}")
        if row["op"].startswith("mix/"):
            for c in row["candidates"]:
                mark = "*" if c["algorithm"] == row["algorithm"] else " "
                lines.append(f"{'':<{_W}}   {mark} {c['algorithm']:<13} est. {c['estimated_seconds']:.3g} s   "
                             f"flops = {_plain(c['flops'])}")
            if formulas:
                lines.append(f"{'':<{_W}}     hbm = {_plain(row['hbm_bytes'])}")

    folding = Folding() if expand else fold_rows(d["layers"])
    members: dict[str, list[dict]] = {}
    for row in d["layers"]:
        found = folding.group_of(row["name"])
        if found is not None:
            members.setdefault(found[0].path, []).append(row)
    done: set[str] = set()
    for row in d["layers"]:
        found = folding.group_of(row["name"])
        if found is None or found[1].count == 1:
            emit(row, row["name"])
            continue
        unit, group = found
        if unit != group.first or unit.path in done:
            continue
        done.add(unit.path)
        rows = members[unit.path]
        if mixers_only and not any(r["op"].startswith("mix/") for r in rows):
            continue
        rel = [relative(r["name"], unit) for r in rows]
        # one definition instance per iteration (the usual case): name the rows inside it
        head = rel[0].split(".")[0]
        inner = all(r == head or r.startswith(head + ".") for r in rel) and head
        title = group.label + (f".{head}" if inner else "")
        note = f"; {group.note}" if group.note else ""
        sums = "" if mixers_only else f", then the sums for one and for all {group.count}"
        lines.append(f"{title} ×{group.count}  (costs of one instance{sums}{note})")
        for r, name in zip(rows, rel, strict=True):
            emit(r, "  " + (name[len(head) + 1:] or head if inner else name))
        if not mixers_only:
            each = {k: sum(r["values"][k] for r in rows) for k in rows[0]["values"]}
            lines.append(f"{_name('  = one instance')} {'':<22} {'':<13} {_numbers(each)}")
            lines.append(f"{_name(f'  = all {group.count}')} {'':<22} {'':<13} "
                         f"{_numbers({k: v * group.count for k, v in each.items()})}")
    t = d["total"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<{_W}} {'':<22} {'':<13} {_numbers(t['values'])}  "
                 f"time {t['big_o']['time']}, memory {t['big_o']['memory']}")
    if formulas:
        lines += ["", "formulas of the total:"]
        for key in ("flops", "matmul_flops", "param_count", "activation_bytes", "hbm_bytes"):
            lines.append(f"  {key} = {_plain(t[key])}")
    return "\n".join(lines)
