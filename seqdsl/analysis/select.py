"""Choosing an algorithm: the candidate with the least estimated time on a machine model.

The machine model is a roofline with two compute rates, plus a cost per sequential step
(a recurrent algorithm cannot run its N steps in parallel; a chunked one has N/C):

    time = max(matmul_flops / matmul_rate + other_flops / vector_rate,  hbm_bytes / bandwidth)
           + steps · step_overhead

Rates are parameters; the defaults describe this project's CPU machine (2 cores, fp32:
~150 GFLOP/s of matrix products as measured in ANCHORS.md, ~10 GFLOP/s elementwise,
~15 GB/s of memory bandwidth, 1 MiB of L2 as the on-chip memory, ~20 µs of dispatch per
step of a loop of tensor ops) and an H100 SXM (dense bf16 products ~750 TFLOP/s of the
989 peak, ~60 TFLOP/s elementwise, 3.35 TB/s of HBM, 228 KiB of shared memory per SM,
~2 µs per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from seqdsl.analysis.estimates import SRAM, Estimates
from seqdsl.errors import Pos, SeqError


@dataclass(frozen=True)
class Machine:
    name: str
    matmul_rate: float      # FLOP/s of matrix products
    vector_rate: float      # FLOP/s of everything else
    bandwidth: float        # bytes/s to and from main memory
    sram_bytes: int         # on-chip memory the tiled algorithms work in
    step_overhead: float    # seconds per sequential step of a recurrent or chunked loop

    @property
    def sram_elements(self) -> int:
        return self.sram_bytes // 4

    def time(self, est: Estimates, subs: dict, steps: sympy.Expr = 1) -> float:
        """Roofline time plus the overhead of the algorithm's sequential steps."""
        values = {k: _number(getattr(est, k), subs, self) for k in ("flops", "matmul_flops", "hbm_bytes")}
        compute = values["matmul_flops"] / self.matmul_rate + \
            max(0.0, values["flops"] - values["matmul_flops"]) / self.vector_rate
        return max(compute, values["hbm_bytes"] / self.bandwidth) + \
            _number(steps, subs, self) * self.step_overhead


def _number(e: sympy.Expr, subs: dict, m: Machine) -> float:
    value = sympy.sympify(e).subs(subs).subs(SRAM, m.sram_elements)
    try:
        return float(value)
    except TypeError:
        missing = ", ".join(sorted(str(s) for s in value.free_symbols))
        raise ValueError(f"cannot evaluate {e} without values for {missing}") from None


MACHINES = {
    "cpu": Machine("cpu", matmul_rate=150e9, vector_rate=10e9, bandwidth=15e9, sram_bytes=1 << 20,
                   step_overhead=2e-5),
    "h100": Machine("h100", matmul_rate=750e12, vector_rate=60e12, bandwidth=3.35e12, sram_bytes=228 * 1024,
                    step_overhead=2e-6),
}


def choose(cands, machine: Machine, subs: dict, forced: str | None = None, where: Pos | None = None):
    """The forced candidate, or the fastest by the machine model; with each one's time."""
    times = {c.algorithm: machine.time(c.forward, subs, c.steps) for c in cands}
    if forced is not None:
        for c in cands:
            if c.algorithm == forced:
                return c, times
        raise SeqError(f"algorithm {forced!r} is not available here: this mixer admits "
                       f"{', '.join(c.algorithm for c in cands)}", where)
    best = min(cands, key=lambda c: times[c.algorithm])
    return best, times


def resolve_forced(graph, forced: dict[str, str] | None) -> dict[str, str]:
    """``forced`` (layer path or glob such as ``layers.*.attn.mix`` or ``*`` -> algorithm, as
    ``--algorithm`` gives it) as exact layer paths, each checked against the algorithms that
    apply to its mixer, and the file's own ``algorithm =`` hints checked the same way: a
    positioned SeqError that lists the valid ones, instead of a crash deep in the analysis."""
    import fnmatch

    from seqdsl.analysis.mixers import candidates
    from seqdsl.ir.graph import OpKind

    def mixers(g):
        for n in g.nodes():
            if n.kind == OpKind.MIX:
                yield g, n
            if n.attr("body") is not None:
                yield from mixers(n.attr("body"))

    found = list(mixers(graph))
    patterns = dict(forced or {})
    out: dict[str, str] = {}
    for pat, alg in patterns.items():
        hits = [n.name for _, n in found if n.name == pat or fnmatch.fnmatchcase(n.name, pat)]
        if not hits:
            names = ", ".join(n.name for _, n in found) or "none"
            raise SeqError(f"--algorithm {pat}={alg}: no mixer matches {pat!r} (mixers: {names})")
        for name in hits:
            out.setdefault(name, alg)
    for g, n in found:
        want = out.get(n.name) or n.spec.hint("algorithm")
        if want is None:
            continue
        admitted = [c.algorithm for c in candidates(g, n, {})]
        if want not in admitted:
            how = "forced" if n.name in out else "from algorithm ="
            raise SeqError(f"{n.name}: algorithm {want!r} ({how}) is not available here: this mixer "
                           f"admits {', '.join(admitted)}", n.pos)
    return out
