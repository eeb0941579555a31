"""Decoding for the Toeplitz family: an SSM's state, or the input history (issue 13).

State of one mixer:

- an SSM kernel (``diag``, ``dplr``, ``ema``, MIMO ``diag``): ``h``, the state of
  ``state.py`` after the last token — [..., C, M] complex for diagonal kernels (real for
  Mega's EMA), [..., M] for S5's MIMO state, [..., C, S] for DPLR's dense one; a shift SSM:
  ``h`` [..., C, S], the register of its last S inputs. Prefill runs the mix's own
  algorithm (FFT, chunked FFT or scan) and returns the final state; a step is one step of
  the recurrence h_t = Ā h_{t−1} + B̄ u_t, y_t = Re(c h_t) (``torch_impl.recurrent_step``):
  O(C · state) per token (DPLR: C · S²). The discretised system (Ā, B̄, c) is kept between
  steps while the weights are the same tensors, unmodified (identity and version counter):
  S4's bilinear DPLR discretisation solves C systems of S × S, 10× a step's own work.
- an explicit kernel (Hyena's implicit filters, long convolutions): ``u`` [..., T, C], the
  inputs so far, and, when the kernel's taps run over N (one tap per position, computed by
  the same graph at the step's position), ``K`` [T, C], the taps so far. A step is
  y_t = Σ_{j ≤ t} K[t − j] u_j: O(t · C) per token — stated, not hidden. A fixed kernel
  of L taps keeps only the last L − 1 inputs.
"""

from __future__ import annotations

import inspect
import weakref

import torch
from torch import Tensor

from codegen.toeplitz.kernels import System, discretize
from codegen.toeplitz.torch_impl import _compute_dtype, recurrent_step, toeplitz_mix
from codegen.torch import decode
from codegen.torch import decode_buffer as buf
from codegen.torch.decode import arguments

_SIG = inspect.signature(toeplitz_mix)
_SYSTEMS: dict[tuple, tuple[list, list[int], System]] = {}   # the last discretisations, by weights


def _system(a: dict, rd: torch.dtype) -> System:
    """``discretize`` of this call's SSM, reused while every weight is the same, unmodified tensor."""
    params = a["params"]
    names = sorted(params)
    key = (a["kind"], a["disc"], a["conj"], a["mimo"], a["kernel_length"], rd, tuple((k, id(params[k])) for k in names))
    hit = _SYSTEMS.get(key)
    if hit is not None and all(r() is params[k] and params[k]._version == v for k, r, v in zip(names, *hit[:2])):
        return hit[2]
    sys = discretize(a["kind"], {k: t.to(rd) for k, t in params.items()}, disc=a["disc"], conj=a["conj"],
                     mimo=a["mimo"], length=a["kernel_length"])
    if len(_SYSTEMS) > 256:
        _SYSTEMS.clear()
    _SYSTEMS[key] = ([weakref.ref(params[k]) for k in names], [params[k]._version for k in names], sys)
    return sys


def _bind(args: tuple, kw: dict) -> dict:
    return arguments(_SIG, args, kw)


def prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    a = _bind(args, kw)
    v, K = a["v"], a["explicit_kernel"]
    if K is None:
        a["return_state"] = True
        out, h = fn(**a)
        return out, {"h": h}
    out = fn(**a)
    if detail == "lag":                  # the whole history, in buffers that grow (decode_buffer.py)
        n, total = v.shape[-2], decode.max_tokens()
        rows = buf.capacity(n + 1, None, None if total is None else max(total, n + 1))
        return out, buf.slot({"u": buf.hold(v, -2, rows), "K": buf.hold(K[:n], 0, rows)})
    return out, {"u": v[..., max(0, v.shape[-2] - K.shape[0] + 1):, :]}


def step(fn, args: tuple, kw: dict, state: dict[str, Tensor], t: int, detail: str = "") -> tuple[Tensor, dict]:
    a = _bind(args, kw)
    v, K = a["v"], a["explicit_kernel"]
    if K is None:
        rd = _compute_dtype(v, *a["params"].values())
        y, h = recurrent_step(state["h"], v[..., 0, :].to(rd), system=_system(a, rd))
        return y[..., None, :].to(v.dtype), {"h": h}
    if detail == "lag":              # this position's input and tap written into the buffers, in place
        ub, kb = buf.append(state, "u", v, -2), buf.append(state, "K", K[:1], 0)
        u, K = ub.view, kb.view                                            # [..., T, C], [T, C]
    else:
        u = torch.cat([state["u"], v], dim=-2)                             # the last L − 1 inputs and this one
    m = min(K.shape[0], u.shape[-2])
    y = (u[..., u.shape[-2] - m:, :] * K[:m].flip(0).to(u.dtype)).sum(-2, keepdim=True)
    new = buf.slot({"u": ub, "K": kb}) if detail == "lag" else {"u": u[..., u.shape[-2] - K.shape[0] + 1:, :]}
    return y.to(v.dtype), new
