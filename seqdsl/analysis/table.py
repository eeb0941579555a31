"""The text table of ``seqdsl analyze complexity`` (the JSON is Report.to_dict())."""

from __future__ import annotations

import re

from seqdsl.analysis.report import Report

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


def render(report: Report, formulas: bool = True, mixers_only: bool = False) -> str:
    """The table; ``mixers_only`` keeps the mix rows (and the total of everything)."""
    d = report.to_dict()
    sizes = ", ".join(f"{k}={v}" for k, v in d["sizes"].items())
    lines = [f"model {d['model']} — {d['pass']}, machine model '{d['machine']}'", f"sizes: {sizes}", ""]
    header = f"{'layer':<40} {'op':<22} {'algorithm':<13} {'FLOPs':>8} {'matmul':>8} {'params':>8} " \
             f"{'act. B':>8} {'HBM B':>8}  big-O"
    lines += [header, "-" * len(header)]
    for row in d["layers"]:
        if mixers_only and not row["op"].startswith("mix/"):
            continue
        v = row["values"]
        name = row["name"] if len(row["name"]) <= 40 else "…" + row["name"][-39:]
        lines.append(f"{name:<40} {row['op']:<22} {row['algorithm']:<13} {_fmt(v['flops']):>8} "
                     f"{_fmt(v['matmul_flops']):>8} {_fmt(v['param_count']):>8} {_fmt(v['activation_bytes']):>8} "
                     f"{_fmt(v['hbm_bytes']):>8}  {row['big_o']['time']}")
        if row["op"].startswith("mix/"):
            for c in row["candidates"]:
                mark = "*" if c["algorithm"] == row["algorithm"] else " "
                lines.append(f"{'':<40}   {mark} {c['algorithm']:<13} est. {c['estimated_seconds']:.3g} s   "
                             f"flops = {_plain(c['flops'])}")
            if formulas:
                lines.append(f"{'':<40}     hbm = {_plain(row['hbm_bytes'])}")
    t = d["total"]
    v = t["values"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<40} {'':<22} {'':<13} {_fmt(v['flops']):>8} {_fmt(v['matmul_flops']):>8} "
                 f"{_fmt(v['param_count']):>8} {_fmt(v['activation_bytes']):>8} {_fmt(v['hbm_bytes']):>8}  "
                 f"time {t['big_o']['time']}, memory {t['big_o']['memory']}")
    if formulas:
        lines += ["", "formulas of the total:"]
        for key in ("flops", "matmul_flops", "param_count", "activation_bytes", "hbm_bytes"):
            lines.append(f"  {key} = {_plain(t[key])}")
    return "\n".join(lines)
