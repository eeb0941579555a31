"""Cost estimates: exact symbolic formulas that add with ``+``.

Conventions (SPEC §5):
- FLOPs as ``torch.utils.flop_counter`` counts them for matrix products: a multiply-add
  is 2 FLOPs, so ``A[m,k] @ B[k,n]`` is 2·m·k·n. ``matmul_flops`` is the part done as
  matrix products; the rest (elementwise, reductions, FFTs, scans) counts one FLOP per
  output element per arithmetic operation, transcendental functions as one.
- Memory in bytes: ``activation_bytes`` is the extra memory a layer needs in the forward
  pass (its output plus any workspace it holds while running); ``hbm_bytes`` the bytes it
  moves to and from main memory under the cache model of :mod:`seqdsl.analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import sympy

ZERO = sympy.Integer(0)

# On-chip memory (SRAM / cache) in elements: the M of the FlashAttention paper.
SRAM = sympy.Symbol("SRAM", positive=True)


@dataclass(frozen=True)
class Estimates:
    flops: sympy.Expr = ZERO
    matmul_flops: sympy.Expr = ZERO
    activation_bytes: sympy.Expr = ZERO
    hbm_bytes: sympy.Expr = ZERO
    param_count: sympy.Expr = ZERO

    def __add__(self, other: Estimates) -> Estimates:
        return Estimates(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scaled(self, k: sympy.Expr, params: bool = False) -> Estimates:
        """k copies of the work (and of the weights if ``params``)."""
        return Estimates(self.flops * k, self.matmul_flops * k, self.activation_bytes * k,
                         self.hbm_bytes * k, self.param_count * (k if params else 1))

    def simplified(self) -> Estimates:
        return Estimates(*(sympy.simplify(sympy.expand(getattr(self, f.name))) for f in fields(self)))

    def as_dict(self) -> dict[str, sympy.Expr]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


KEYS = ("flops", "matmul_flops", "param_count", "activation_bytes", "hbm_bytes")
