"""Decoding for the linear / decayed-linear family: the recurrent state (issue 13).

State of one mixer: ``S`` [..., F, V] — Σ_j (Π_{t=j+1..i} a_t) φ(k_j)ᵀ v_j, the [Dk, Dv] state
per head (F = Dk, or the feature count of favor / spectral maps), unscaled; with
``norm="sum"`` one more column holds the normaliser Σ_j … φ(k_j) ([..., F, V + 1]).

Prefill runs the mixer's own algorithm (chunked, quadratic …) over the prompt and keeps the
final state; a step is one step of the recurrence S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,
o_t = scale · φ(q_t) S_t: O(F · V) per token and head, whatever the context length.
"""

from __future__ import annotations

import inspect

from torch import Tensor

from codegen.linear.torch_impl import linear_attention
from codegen.torch.decode import arguments

_SIG = inspect.signature(linear_attention)


def _bind(args: tuple, kw: dict) -> dict:
    return arguments(_SIG, args, kw)


def prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    a = _bind(args, kw)
    a["return_state"] = True
    out, state = fn(**a)
    return out, {"S": state}


def step(fn, args: tuple, kw: dict, state: dict[str, Tensor], t: int, detail: str = "") -> tuple[Tensor, dict]:
    a = _bind(args, kw)
    a.update(initial_state=state["S"], return_state=True, algorithm="recurrent")
    out, new = fn(**a)
    return out, {"S": new}
