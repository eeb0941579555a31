"""What the one-process runtimes call when a ``sequence_parallel`` block is active.

Each family entry (``softmax_attention``, ``linear_attention``, ``toeplitz_mix``), the
layers that read positions (``by_position``, ``rotary_by_position``) or neighbours
(``conv1d_by_document``) and the size binding of generated modules hand over to the
functions here, which refuse what has no distributed form by name and otherwise run the
algorithm of ``codegen/distributed``. The module's code is unchanged: a generated module
runs sequence-parallel when it is called inside the block with its inputs sharded.

Sizes. Under the block, the entry's ``bind_sizes`` turns the local length of the sequence
axis (axis 1 of the first input, or −2 for [B, .., N, D] inputs, as for packed rows) into the
global N (one all-gather of the local lengths) and keeps the layout for the call; child
modules read the same global N (``rt.seq_length``), so that masks, kernel lengths and
position tables see the whole sequence, and position tables are read at the global
positions of this rank's rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from codegen.distributed.context import SequenceParallel, active
from codegen.distributed.layout import Layout
from seqdsl.errors import SeqError


def _sp() -> SequenceParallel:
    sp = active()
    if sp is None:
        raise RuntimeError("no sequence_parallel block is active")
    return sp


def _no(what: str, why: str) -> None:
    raise SeqError(f"sequence parallelism: {what} {why}")


def current_layout(n_local: int) -> Layout:
    """The layout of the call being run whose local length is ``n_local`` (from the entry's
    binding; a collective when the module was called without one)."""
    sp = _sp()
    lay = sp.state.get("layout")
    if lay is None or lay.size(sp.rank) != n_local:
        lay = sp.layout_of(n_local)
        sp.state["layout"] = lay
    return lay


def bind(module, names: tuple, values: tuple) -> tuple:
    """``bind_sizes``'s values with the sequence dim turned global."""
    if not module.INPUTS or not isinstance(module.INPUTS[0][2], tuple) or len(module.INPUTS[0][2]) < 2:
        return values
    shape = module.INPUTS[0][2]
    dim = shape[1] if len(shape) == 2 else shape[-2]
    if not isinstance(dim, str) or dim not in names:
        _no(f"{module.ENTRY}:", "its first input has no sequence axis read at call time (fixed by the weights "
            "or the file), so it cannot be split along N")
    i = names.index(dim)
    sp = _sp()
    lay = sp.layout_of(int(values[i]))
    sp.state["layout"] = lay
    return tuple(lay.n if j == i else v for j, v in enumerate(values))


def seq_length(n_local: int) -> int:
    """The global length of the sequence being run (bound by the entry for this call; a child
    module's first input may be replicated rows or a table over N, whose length says nothing
    of the split), else that of the sequence whose local length is ``n_local``."""
    lay = _sp().state.get("layout")
    return lay.n if lay is not None else current_layout(n_local).n


def by_position(table: Tensor) -> Tensor:
    """A table over the global positions [N, …] read at this rank's rows."""
    sp = _sp()
    lay = sp.state.get("layout")
    if lay is None or table.shape[0] != lay.n:
        _no("a position table", f"of {table.shape[0]} rows does not cover the sequence being run")
    return table.index_select(0, lay.positions(sp.rank, table.device))


def local_rows(x: Tensor, axis: int) -> Tensor:
    """A tensor computed whole over the global sequence, at this rank's rows of ``axis``."""
    sp = _sp()
    lay = sp.state.get("layout")
    if lay is None or x.shape[axis] != lay.n:
        _no("a tensor over the sequence", f"has {x.shape[axis]} rows on axis {axis}, not the N = "
            f"{None if lay is None else lay.n} of the sequence being run")
    return x.index_select(axis, lay.positions(sp.rank, x.device))


def rotary(x: Tensor, fraction: float, base: float) -> Tensor:
    """RoFormer's rotation at the global positions of this rank's rows (axis −2)."""
    sp = _sp()
    pos = current_layout(x.shape[-2]).positions(sp.rank, x.device).to(torch.float32)
    d = x.shape[-1]
    rot = int(d * fraction) // 2 * 2
    half = rot // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angle = pos[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, causal: bool) -> Tensor:
    from codegen.distributed import toeplitz

    return toeplitz.conv1d(x, weight, bias, causal, sp=_sp())


def softmax(q, k, v, mask, *, scale, bias, cap, algorithm, block, docs) -> Tensor:
    from codegen.distributed import softmax as dsm

    if docs is not None:
        _no("softmax attention:", "packed rows (doc_ids) and sequence parallelism together are not supported")
    if _sp().state.get("replicated_queries"):     # global tokens' queries over every key (rows.py)
        from codegen.distributed.rows import replicated_queries_attention

        return replicated_queries_attention(q, k, v, mask, scale=scale, bias=bias, cap=cap, sp=_sp())
    return dsm.softmax_attention(q, k, v, mask, scale=scale, bias=bias, cap=cap, algorithm=algorithm, block=block,
                                 sp=_sp())


def given() -> None:
    _no("given attention scores", "(a Synthesizer's [N, N] table) mix every position with weights of its own; "
        "they have no sequence-parallel form")


def linear(q, k, v, *, initial_state, return_state, docs, doc_ids, **kw) -> Tensor:
    from codegen.distributed import linear as dlin

    if _sp().state.get("replicated_queries"):
        _no("linear attention:", "replicated queries over sharded keys have no distributed form (softmax only)")

    if initial_state is not None or return_state:
        _no("linear attention:", "an initial or returned state (decoding) runs on one process")
    if docs is not None or doc_ids is not None:
        _no("linear attention:", "packed rows or document ids with sequence parallelism are not supported")
    return dlin.linear_attention(q, k, v, sp=_sp(), **kw)


def toeplitz(v, *, initial_state, return_state, docs, doc_ids, diagonal, **kw) -> Tensor:
    from codegen.distributed import toeplitz as dtz

    if initial_state is not None or return_state:
        _no("Toeplitz mix:", "an initial or returned state (decoding) runs on one process")
    if docs is not None or doc_ids is not None:
        _no("Toeplitz mix:", "packed rows or document ids with sequence parallelism are not supported")
    if diagonal != "once" and not kw.get("causal", True):
        _no("Toeplitz mix:", f"a bidirectional SSM with diagonal={diagonal!r} has no distributed form yet "
            "(only 'once')")
    return dtz.toeplitz_mix(v, sp=_sp(), **kw)


def unsharded(path: str, why: str) -> None:
    """Refuse, by layer path, a layer that reads across the split sequence (a no-op outside a
    ``sequence_parallel`` block)."""
    if active() is not None:
        raise SeqError(f"{path}: cannot run with the sequence split over ranks: {why}")
