"""Each stateful kind's prefill and step (the families' ``step.py``; conv1d here, since the
ordinary layers live in runtime.py). Signatures:

    prefill(fn, args, kw, detail) -> (output, state dict)
    step(fn, args, kw, state dict, position, detail) -> (output, state dict)

``fn(*args, **kw)`` is the runtime call the generated code made.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from codegen.linear import step as linear_step
from codegen.softmax import step as softmax_step
from codegen.toeplitz import step as toeplitz_step
from codegen.torch import decode_window as window


@functools.cache
def _signature(fn) -> inspect.Signature:
    return inspect.signature(fn)


def _conv_args(fn, args: tuple, kw: dict) -> dict:
    a = _signature(fn).bind(*args, **kw)
    a.apply_defaults()
    return dict(a.arguments)


def conv1d_prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[Tensor, dict[str, Tensor]]:
    """A causal depthwise convolution of width W keeps its last W − 1 inputs (zeros before
    the first token): a ring buffer of the taps, O(W · C) per token."""
    a = _conv_args(fn, args, kw)
    x, width = a["x"], a["weight"].shape[-1]
    pad = torch.zeros(*x.shape[:-2], max(0, width - 1 - x.shape[-2]), x.shape[-1], dtype=x.dtype, device=x.device)
    return fn(**a), {"x": torch.cat([pad, x], dim=-2)[..., x.shape[-2] + pad.shape[-2] - (width - 1):, :]}


def conv1d_step(fn, args: tuple, kw: dict, state: dict[str, Tensor], t: int, detail: str = "") -> tuple:
    a = _conv_args(fn, args, kw)
    x, w, b = a["x"], a["weight"], a["bias"]
    window = torch.cat([state["x"], x], dim=-2)                           # [..., W, C], oldest first
    y = torch.einsum("...wc,cw->...c", window, w)[..., None, :]
    if b is not None:
        y = y + b
    return y, {"x": window[..., 1:, :]}


def recurrent_prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple[tuple, dict[str, Tensor]]:
    """``recurrent(step, x, state, segment)``: the state after the last whole segment, and the
    inputs of the segment begun (its rows are re-run by each step: O(segment) per token)."""
    a = _conv_args(fn, args, kw)
    step, x, state, seg = a["step"], a["x"], a["state"], a["segment"]
    whole = x.shape[-2] // seg * seg
    ys = []
    if whole:
        y, state = fn(step, x[..., :whole, :], state, seg)
        ys.append(y)
    carried, rest = state, x[..., whole:, :]
    if rest.shape[-2]:
        y, state = step(rest, carried)
        ys.append(y)
    return (torch.cat(ys, dim=-2), state), {"state": carried, "x": rest}


def recurrent_step(fn, args: tuple, kw: dict, slot: dict[str, Tensor], t: int, detail: str = "") -> tuple:
    a = _conv_args(fn, args, kw)
    step, seg = a["step"], a["segment"]
    x = torch.cat([slot["x"], a["x"]], dim=-2)
    y, state = step(x, slot["state"])
    if x.shape[-2] == seg:            # the segment is whole: its state is carried, its rows dropped
        return (y[..., -1:, :], state), {"state": state, "x": x[..., :0, :]}
    return (y[..., -1:, :], state), {"state": slot["state"], "x": x}


def softmax_prefill(fn, args: tuple, kw: dict, detail: str = "") -> tuple:
    if detail == "window":                  # queries: a window's rows (decode_window.py)
        return window.softmax_prefill(fn, args, kw, detail)
    return softmax_step.prefill(fn, args, kw, detail)


def softmax_step_(fn, args: tuple, kw: dict, state, t: int, detail: str = "") -> tuple:
    if detail == "window":
        return window.softmax_step(fn, args, kw, state, t, detail)
    return softmax_step.step(fn, args, kw, state, t, detail)


_FAMILIES = {"softmax": (softmax_prefill, softmax_step_), "linear": (linear_step.prefill, linear_step.step),
             "toeplitz": (toeplitz_step.prefill, toeplitz_step.step), "conv1d": (conv1d_prefill, conv1d_step),
             "recurrent": (recurrent_prefill, recurrent_step),
             "window": (window.window_prefill, window.window_step)}
# every kind also runs as a plain call below a window (detail "rerun")
PREFILL = {k: window.rerun(*v)[0] for k, v in _FAMILIES.items()}
STEP = {k: window.rerun(*v)[1] for k, v in _FAMILIES.items()}
