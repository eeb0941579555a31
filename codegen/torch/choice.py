"""Which algorithm each mixer runs, and how the generated call names it.

The cost model (seqdsl/analysis) estimates every algorithm a mixer's structure admits; the
fastest on the machine model is chosen. When a length of the mixer is read at call time
(codegen/torch/sizes.py), the model is evaluated at every power of two of it and the
generated call carries the result as a table: ``algorithm=rt.by_length(N, ((64,
'materialized'), (None, 'sdpa')))``. Evaluations are cached by the mixer's structure: a
model has many mixers of one structure.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import sympy

from codegen.source import literal
from seqdsl.analysis import mixers as cost
from seqdsl.analysis.select import choose
from seqdsl.ir.graph import Node


@dataclass
class Choice:
    """What was chosen for one mixer, and why."""

    path: str
    family: str
    algorithm: str
    estimates: dict[str, float]
    forced: bool
    backend: str = "torch"
    note: str = ""          # e.g. the generated kernel, or why a node falls back to PyTorch
    # (dim, ((largest size, algorithm), ..., (None, algorithm))) when the choice depends on a
    # length read at call time; ``algorithm`` is then the choice at the file's default sizes
    by_length: tuple | None = None

    def describe(self) -> str:
        """The choice by length in words: "sdpa for N ≤ 8192, tiled beyond"."""
        if self.by_length is None:
            return self.algorithm
        dim, table = self.by_length
        parts = [f"{alg} for {dim} ≤ {size}" if size is not None else f"{alg} beyond" for size, alg in table]
        return ", ".join(parts)


# (mixer structure, sizes, forced, machine) -> (algorithm, estimates): the cost model is
# symbolic and slow to evaluate; a model has many mixers of one structure.
_CHOICES: dict[tuple, tuple[str, dict]] = {}

# The cost model is sampled at these powers of two of a length read at call time.
LADDER = range(4, 23)


def _forced(patterns: dict[str, str], path: str) -> str | None:
    """The algorithm forced for the mixer at ``path``: an exact path, else the first glob that
    matches (``layers.*.attn.mix``)."""
    if path in patterns:
        return patterns[path]
    return next((alg for pat, alg in patterns.items() if fnmatch.fnmatchcase(path, pat)), None)


class Chooser:
    """The writer's algorithm choice (mixed into codegen.torch.emit._Writer)."""

    def choose(self, n: Node) -> Choice:
        """The algorithm at the default sizes and, when a length of the mixer is read at call
        time, the cost model's choice at each power of two of it (``Choice.by_length``)."""
        forced = _forced(self.forced, n.name) or n.spec.hint("algorithm")
        shapes = cost.shapes_of(self.g, n)
        lengths = [d for d in self.sizes.plan.runtime
                   if d in {s.name for s in sympy.sympify(shapes.nq).free_symbols | sympy.sympify(shapes.nk).free_symbols}]
        defaults = {d: self.sizes.plan.defaults.get(d, 1) for d in self.sizes.runtime}
        best, times = self._choose_at(n, defaults, forced)
        c = Choice(n.name, n.spec.family, best, times, forced is not None)
        if forced is None and lengths:
            ladder = [(1 << k, self._choose_at(n, {**defaults, **{d: 1 << k for d in lengths}}, None)[0])
                      for k in LADDER]
            table: list[tuple[int | None, str]] = []
            for (size, alg), nxt in zip(ladder, ladder[1:] + [(None, None)]):
                if nxt[1] != alg:
                    table.append((size if nxt[1] is not None else None, alg))
            if len(table) > 1:
                c.by_length = (lengths[0], tuple(table))
        self.choices.append(c)
        return c

    def _choose_at(self, n: Node, runtime_values: dict[str, int], forced: str | None):
        key = (self._structure_key(n), tuple(sorted({**self.sizes.values, **runtime_values}.items())), forced,
               self.machine.name)
        if key not in _CHOICES:
            _CHOICES[key] = self._choose_uncached(n, runtime_values, forced)
        return _CHOICES[key]

    def _structure_key(self, n: Node) -> tuple:
        """What the cost of a mixer depends on: its template, its inputs' types and producers."""
        parts = [repr(n.spec)]
        for p in n.inputs:
            src = self.g.node(p.node)
            attrs = tuple((k, v) for k, v in src.attrs if k != "body")
            parts.append((p.role, str(self.g.type_of(p)), src.kind.value, repr(attrs)))
        return tuple(parts)

    def _choose_uncached(self, n: Node, runtime_values: dict[str, int], forced: str | None):
        subs = {}
        for name, v in {**self.sizes.values, **runtime_values}.items():
            subs[sympy.Symbol(name, positive=True, integer=True)] = v
            subs[sympy.Symbol(name, real=True)] = v
        for sym, value in cost.TILE_DEFAULTS.items():
            subs[sym] = value
        cands = cost.candidates(self.g, n, subs)
        if forced is not None and forced not in {c.algorithm for c in cands}:
            raise ValueError(f"{n.name}: algorithm {forced!r} does not apply to this mixer "
                             f"(it admits {', '.join(c.algorithm for c in cands)})")
        best, times = choose(cands, self.machine, subs, forced)
        return best.algorithm, times

    def algorithm_code(self, choice: Choice) -> str:
        """The mixer call's ``algorithm=`` argument: a literal, or the choice by length."""
        if choice.by_length is None:
            return literal(choice.algorithm)
        dim, table = choice.by_length
        return f"rt.by_length({self.sizes.pyname[dim]}, {literal(table)})"
