"""Decoding: ``prefill`` and ``step`` run the generated forward itself, with a context.

The generated module is the same for training and generation. ``model.prefill(tokens)``
and ``model.step(token, state)`` call its ``forward`` inside a :class:`Context` that the
runtimes consult:

- every stateful call (a mixer, a causal ``conv1d``) takes the next slot of the plan that
  the code generator wrote into the entry class (``DECODE``, from
  :mod:`codegen.decode.plan`, in call order); in prefill it runs its family's usual
  algorithm over the prompt and keeps the state its family needs, in a step it runs one
  position from that state (the families' ``step.py``);
- positional ops (``rt.arange(N, seq=True)``, ``rt.sinusoidal``, ``rt.rotary``, position
  tables read through ``rt.seq_rows(N)``) start at the position of the first token of the
  call instead of 0;
- the sequence dim is bound to the call's length (the prompt's, then 1); ``require``s on
  it (e.g. ``N % Bk == 0``) constrain whole-sequence calls and are not checked, except those
  that bound it from above (``N <= Nmax``, the entry's ``DECODE_LIMITS``): prefill and step
  refuse the length they reach past one, as a forward at that length does.

A :class:`DecodeState` is a dict from layer path to that layer's tensors (batch first),
with ``position`` (tokens seen), ``nbytes``, ``to(...)``, ``select(rows)`` and
``DecodeState.cat(states)`` to batch sequences of the same length.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from codegen.torch import decode_buffer as buf
from seqdsl.errors import Pos, SeqError

_CTX: contextvars.ContextVar[Context | None] = contextvars.ContextVar("seqdsl_decode", default=None)


class DecodeState(dict):
    """Layer path -> {name: tensor} (batch first), after ``position`` tokens. A KV cache's
    tensors are views of buffers with room to grow (:mod:`codegen.torch.decode_buffer`)."""

    def __init__(self, *args, position: int = 0, **kw):
        super().__init__(*args, **kw)
        self.position = position

    @property
    def nbytes(self) -> int:
        """Bytes the state keeps alive: every tensor, and a growing cache's whole buffer (its
        spare capacity included)."""
        return sum(part.held_nbytes() if isinstance(part, buf.Slot) else _bytes(part) for part in self.values())

    @property
    def used_nbytes(self) -> int:
        """Bytes of the tensors themselves (a cache's rows, not its spare capacity): what
        ``analyze complexity --decode`` predicts."""
        return sum(_bytes(part) for part in self.values())

    def to(self, *args, **kw) -> DecodeState:
        """A copy with every tensor moved / cast as ``Tensor.to(*args, **kw)`` does (complex SSM
        states keep their complex dtype under a float cast; caches keep their spare capacity)."""
        def move(t: Tensor) -> Tensor:
            if t.is_complex() and any(isinstance(a, torch.dtype) for a in (*args, *kw.values())):
                return t.to(*(a for a in args if not isinstance(a, torch.dtype)),
                            **{k: v for k, v in kw.items() if k != "dtype"})
            return t.to(*args, **kw)
        return DecodeState({k: buf.remake(part, move) for k, part in self.items()}, position=self.position)

    def select(self, rows) -> DecodeState:
        """The state of some sequences of the batch (an index, slice or index tensor)."""
        rows = [rows] if isinstance(rows, int) else rows
        return DecodeState({k: buf.remake(part, lambda t: t[rows]) for k, part in self.items()},
                           position=self.position)

    @staticmethod
    def cat(states: list[DecodeState]) -> DecodeState:
        """One batch from the states of sequences that have seen the same number of tokens.
        Sequences of different lengths are refused: a step runs every row at one position (the
        positional ops, the masks and the cache's rows are the same for the whole batch)."""
        positions = {s.position for s in states}
        if len(positions) != 1:
            raise ValueError(f"states of different lengths cannot share a batch: {sorted(positions)} tokens "
                             "(a step runs every sequence of its batch at the same position)")
        first = states[0]
        return DecodeState({k: buf.concat([s[k] for s in states]) for k in first}, position=first.position)

    def describe(self) -> str:
        """One line per tensor: path, name, shape, dtype (and a cache's capacity in rows)."""
        def room(part: dict, name: str) -> str:
            b = part.buffer(name) if isinstance(part, buf.Slot) else None
            return "" if b is None else f" (buffer of {b.capacity} rows)"
        return "\n".join(f"{k}.{n}: {list(t.shape)} {str(t.dtype).removeprefix('torch.')}{room(part, n)}"
                         for k, part in self.items() for n, t in part.items())


def _bytes(part: dict) -> int:
    return sum(t.numel() * t.element_size() for t in part.values())


class Context:
    """The decoding context of one forward call."""

    def __init__(self, mode: str, slots: tuple, state: DecodeState, position: int, max_tokens: int | None = None):
        self.mode, self.slots, self.position, self.max_tokens = mode, slots, position, max_tokens
        self.state_in = state
        self.state_out = DecodeState(position=position)
        self.next = 0
        self.inside = False

    def take(self, kind: str) -> tuple[str, str, str]:
        if self.next >= len(self.slots):
            raise RuntimeError(f"decoding: a {kind} call beyond the {len(self.slots)} stateful layers of the plan")
        path, want, detail = self.slots[self.next]
        if want != kind:
            raise RuntimeError(f"decoding: call {self.next} is a {kind}, the plan expects a {want} ({path})")
        self.next += 1
        return path, want, detail

    def run(self, kind: str, fn: Callable, args: tuple, kw: dict):
        """One stateful call: the family's prefill or step with this slot's state."""
        from codegen.torch import decode_families as fam

        path, _, detail = self.take(kind)
        self.inside = True
        try:
            if self.mode == "prefill":
                out, st = fam.PREFILL[kind](fn, args, kw, detail)
            else:
                out, st = fam.STEP[kind](fn, args, kw, self.state_in[path], self.position, detail)
        finally:
            self.inside = False
        self.state_out[path] = st
        return out


def active() -> Context | None:
    """The context of the forward being run by prefill/step (None otherwise, and inside a
    family's own algorithm)."""
    ctx = _CTX.get()
    return None if ctx is None or ctx.inside else ctx


def offset() -> int:
    """The position of the first token of this call (0 outside decoding)."""
    ctx = _CTX.get()
    return 0 if ctx is None else ctx.position


def max_tokens() -> int | None:
    """The tokens a prefill expects its sequences to reach (prompt and generated; a growing
    cache is made that large), None when not said."""
    ctx = _CTX.get()
    return None if ctx is None else ctx.max_tokens


def batch_size() -> int:
    """The number of sequences of the call being decoded."""
    return _CTX.get().batch


def running() -> bool:
    """True inside prefill / step."""
    return _CTX.get() is not None


def arguments(sig: inspect.Signature, args: tuple, kw: dict) -> dict:
    """A family call's arguments by name, defaults filled in (what its step reads)."""
    bound = sig.bind(*args, **kw)
    bound.apply_defaults()
    return dict(bound.arguments)


def stateful(kind: str) -> Callable[[Callable], Callable]:
    """Marks a runtime function as one stateful call of the plan: outside decoding it runs as
    written; inside prefill / step its family's ``prefill`` / ``step`` runs it (once, with
    the context set aside, so that its own algorithm is the plain one)."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kw):
            ctx = _CTX.get()
            if ctx is None or ctx.inside:
                return fn(*args, **kw)
            return ctx.run(kind, fn, args, kw)
        return run
    return wrap


# ---- the API of generated modules (rt.SeqModule.prefill / step / can_decode) -----------


def can_decode(module) -> tuple[bool, str]:
    plan = getattr(type(module), "DECODE", None)
    if plan is None:
        return False, "the module was generated without a decoding plan"
    if isinstance(plan, str):
        return False, plan
    return True, f"{len(plan[1])} stateful layers, sequence dim {plan[0]}"


def _plan(module) -> tuple[str, tuple]:
    ok, why = can_decode(module)
    if not ok:
        raise SeqError(f"{module.ENTRY} cannot decode: {why}")
    return type(module).DECODE


def _forward(module, mode: str, state: DecodeState, inputs: tuple,
             max_tokens: int | None = None) -> tuple[Tensor, DecodeState]:
    seq, slots = _plan(module)
    ctx = Context(mode, slots, state, state.position, max_tokens)
    ctx.batch = int(inputs[0].shape[0])     # the sequences (a window of a shared table keeps a copy each)
    bound = getattr(module, "BOUNDS", {}).get(seq)
    length = int(inputs[0].shape[1])
    if bound is not None and state.position + length > bound:
        raise SeqError(f"{module.ENTRY}: position {state.position + length - 1} is beyond the position table, built "
                       f"for at most {seq} = {bound} (load the model with {seq}={state.position + length})")
    for limit, message, file, line, col in getattr(module, "DECODE_LIMITS", ()):
        if state.position + length > limit:    # a forward at this length refuses it; no longer one accepts it
            raise SeqError(message, Pos(file, line, col))
    token = _CTX.set(ctx)
    try:
        with torch.no_grad():
            out = module(*inputs)
    finally:
        _CTX.reset(token)
    if ctx.next != len(slots):
        raise RuntimeError(f"decoding: the forward made {ctx.next} stateful calls, the plan lists {len(slots)}")
    ctx.state_out.position = state.position + length
    return out, ctx.state_out


def prefill(module, *inputs: Tensor, max_tokens: int | None = None) -> tuple[Tensor, DecodeState]:
    """Run the prompt with the usual (parallel / chunked) algorithms: (the forward's output,
    the state after the prompt). ``max_tokens``: the length the sequences are expected to
    reach (prompt and generated); a KV cache is made that large at once (it still grows past
    it, doubling)."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be ≥ 1, got {max_tokens}")
    return _forward(module, "prefill", DecodeState(), inputs, max_tokens)


def step(module, token: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
    """One position: ``token`` [B] (or [B, 1]; a float input: [B, C] or [B, 1, C]) -> (the
    output at that position, [B, V] for a [B, N, V] model; the new state). ``state`` is not
    modified."""
    _, dtype, shape = module.INPUTS[0]
    x = token if token.dim() == len(shape) else token.unsqueeze(1)
    out, new = _forward(module, "step", state, (x,))
    return out[:, -1], new
