"""What the one-process runtimes call when a ``sequence_parallel`` block is active.

Each family entry (``softmax_attention``, ``linear_attention``, ``toeplitz_mix``), the
layers that read positions (``by_position``, ``rotary_by_position``) or neighbours
(``conv1d_by_document``) and the size binding of generated modules hand over to the
functions here, which refuse what has no distributed form by name and otherwise run the
algorithm of ``codegen/distributed``. The module's code is unchanged: a generated module
runs sequence-parallel when it is called inside the block with its inputs sharded.

Sizes. Under the block, the entry's ``bind_sizes`` reads the sequence axis (axis 1 of the
first input, or −2 for [B, .., N, D] inputs, as for packed rows) as the global N (one
all-gather of the local lengths), before it checks a fixed N or binds a variable one, and
keeps the layout for the call; child
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


def global_sizes(module, inputs: tuple) -> list[tuple[int, ...] | None]:
    """The sizes of the entry's inputs with the sequence axis (axis 1 of [B, N], −2 of
    [B, .., N, D], as the first input declares it) read as the global N, for ``bind_sizes`` to
    check and bind: a module built for a fixed N (``load(..., N=39)``) checks the whole length,
    and its requirements on N (``N % Bk == 0``) are about the whole sequence. One all-gather of
    the local lengths; the layout is kept for the call."""
    sizes = [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in inputs]
    if not module.INPUTS or sizes[0] is None or not isinstance(module.INPUTS[0][2], tuple) \
            or len(module.INPUTS[0][2]) < 2 or len(sizes[0]) != len(module.INPUTS[0][2]):
        return sizes
    axis_of = lambda shape: 1 if len(shape) == 2 else len(shape) - 2      # noqa: E731
    want = module.INPUTS[0][2][axis_of(module.INPUTS[0][2])]
    name = want if isinstance(want, str) else want[0] if isinstance(want, tuple) else None
    if name is None:
        _no(f"{module.ENTRY}:", "its first input has no sequence axis named in the file (a size fixed by the "
            "weights), so it cannot be split along N")
    sp = _sp()
    lay = sp.layout_of(int(sizes[0][axis_of(sizes[0])]))
    sp.state["layout"] = lay
    out = []
    for (_, _, shape), s in zip(module.INPUTS, sizes):
        if s is not None and len(s) == len(shape) >= 2:
            a = axis_of(shape)
            w = shape[a]
            if w == name or (isinstance(w, tuple) and w[0] == name):
                s = s[:a] + (lay.n,) + s[a + 1:]
        out.append(s)
    return out


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
