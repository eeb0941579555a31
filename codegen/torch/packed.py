"""What generated modules call for packed rows (``codegen/torch/packing.py`` decides where).

``packing`` makes a call's documents current (``codegen.varlen``); ``documents()`` reads
them (None for an ordinary call, and then every function here is the plain layer);
``unpacked`` refuses, by layer path, a layer that cannot honour document boundaries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from codegen import varlen
from codegen.distributed import hooks as _sp_hooks
from codegen.distributed.context import active as _sp_active
from seqdsl.errors import SeqError


@contextlib.contextmanager
def packing(doc_ids: Tensor | None, batch: int, length: int) -> Iterator[None]:
    """The documents of this call: ``doc_ids`` [batch, length] (or [length]: every row alike), or
    a ``codegen.varlen.Documents`` (e.g. ``Documents.from_cu_seqlens(cu_seqlens, N)``)."""
    if doc_ids is None:
        with varlen.packing(None):
            yield
        return
    if isinstance(doc_ids, varlen.Documents):
        if tuple(doc_ids.shape) != (batch, length):
            raise SeqError(f"doc_ids are {list(doc_ids.shape)}, the input is [B={batch}, N={length}]")
        with varlen.packing(doc_ids):
            yield
        return
    if not isinstance(doc_ids, Tensor) or doc_ids.dtype.is_floating_point or doc_ids.dtype == torch.bool:
        raise SeqError(f"doc_ids must be an integer tensor [B, N] (the document of every position), "
                       f"got {type(doc_ids).__name__}{'' if not isinstance(doc_ids, Tensor) else ' ' + str(doc_ids.dtype)}")
    ids = doc_ids.reshape(1, -1).expand(batch, -1) if doc_ids.dim() == 1 else doc_ids
    if tuple(ids.shape) != (batch, length):
        raise SeqError(f"doc_ids are {list(doc_ids.shape)}, the input is [B={batch}, N={length}]")
    with varlen.packing(varlen.Documents.from_ids(ids)):
        yield


def documents() -> varlen.Documents | None:
    """The documents of the call being run (None: one sequence per row)."""
    return varlen.current()


def unpacked(path: str, why: str) -> None:
    """Refuse packed rows at the layer ``path`` (a no-op for ordinary calls)."""
    if varlen.current() is not None:
        raise SeqError(f"{path}: cannot keep the documents of packed rows apart (doc_ids): {why}; "
                       "run the documents as separate rows (padded) instead")


def by_position(table: Tensor, docs: varlen.Documents | None) -> Tensor:
    """Rows of a table over positions 0 … N−1 (arange, sinusoidal encodings, a learned position
    table), read at each position's index inside its document: [N, …] → [B, N, …]."""
    if docs is None and _sp_active() is not None:       # the sequence split over ranks
        return _sp_hooks.by_position(table)
    if docs is None:
        return table
    return table[docs.positions.to(table.device)]


def rotary_by_position(x: Tensor, fraction: float, base: float, docs: varlen.Documents | None,
                       seq: bool = False) -> Tensor:
    """RoFormer's rotation (as ``rt.rotary``) by each position's index inside its document;
    x [B, …, N, D]."""
    from codegen.torch import runtime as rt

    if docs is None and _sp_active() is not None:       # the sequence split over ranks
        return _sp_hooks.rotary(x, fraction, base)
    if docs is None:
        return rt.rotary(x, fraction, base, seq)       # seq: positions from t in a decoding step
    docs.check(x.shape[0], x.shape[-2], "rotary")
    d = x.shape[-1]
    rot = int(d * fraction) // 2 * 2
    half = rot // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    pos = docs.view(x.dim()).to(x.device)                                    # [B, 1…, N]
    angle = docs.positions.to(x.device).reshape(pos.shape).float()[..., None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def conv1d_by_document(x: Tensor, weight: Tensor, bias: Tensor | None = None, causal: bool = True,
                       docs: varlen.Documents | None = None) -> Tensor:
    """The depthwise convolution of ``rt.conv1d`` (x [B, …, N, C], weight [C, width]) with no tap
    across a document boundary: each document is convolved as if alone (zero history)."""
    from codegen.torch import runtime as rt

    if docs is None and _sp_active() is not None:       # the sequence split over ranks: a halo exchange
        return _sp_hooks.conv1d(x, weight, bias, causal)
    if docs is None:
        return rt.conv1d(x, weight, bias, causal)
    docs.check(x.shape[0], x.shape[-2], "conv1d")
    lead, n, c = x.shape[:-2], x.shape[-2], x.shape[-1]
    width = weight.shape[-1]
    pad = (width - 1, 0) if causal else ((width - 1) // 2, width // 2)
    ids = docs.view(x.dim()).to(x.device).expand(*lead, n).reshape(-1, n)       # [R, N]
    u = x.reshape(-1, n, c).transpose(1, 2)                                      # [R, C, N]
    win = F.pad(u, pad).unfold(-1, width, 1)                                     # [R, C, N, width]
    idw = F.pad(ids, pad, value=-1).unfold(-1, width, 1)                         # [R, N, width]
    keep = (idw == ids[..., None]).to(x.dtype)                                   # taps inside the document
    y = torch.einsum("rcnw,rnw,cw->rnc", win, keep, weight)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, n, c)


def attention_by_document(kernel, q: Tensor, k: Tensor, v: Tensor, *args, docs: varlen.Documents | None = None):
    """A generated Triton softmax kernel over packed rows: q, k, v [B, H, N, D] become the
    kernel's varlen layout [H, B·N, D] with FlashAttention's ``cu_seqlens`` at every document
    start (its mask then counts positions from each document's start), and back."""
    if docs is None:
        return kernel(q, k, v, *args)
    b, n = q.shape[0], q.shape[-2]
    docs.check(b, n, "softmax attention (Triton)")
    if q.dim() != 4 or k.shape[-2] != n:
        raise SeqError("packed rows: the Triton softmax kernel takes q, k, v [B, H, N, D] over the packed sequence")
    row, start, length, _ = docs._layout
    cu = torch.cat([(row * n + start), row.new_tensor([b * n])]).to(torch.int32)

    def flat(x: Tensor) -> Tensor:
        return x.expand(b, *x.shape[1:]).permute(1, 0, 2, 3).reshape(x.shape[1], b * n, x.shape[-1])
    out = kernel(flat(q), flat(k), flat(v), *args, cu_seqlens=cu)
    return out.reshape(out.shape[0], b, n, out.shape[-1]).permute(1, 0, 2, 3)


def linear_by_document(kernel, q: Tensor, k: Tensor, v: Tensor, *, decay=None, docs: varlen.Documents | None = None,
                       **kw):
    """A generated Triton linear-attention kernel over packed rows: the documents gathered into
    a [documents, …, longest, ·] batch (zeros after each end: no key, no value, no decay), the
    kernel run from a zero state per document, the outputs scattered back — the state reset
    at every boundary, as ``codegen/linear/varlen.py`` does in PyTorch, at the kernel's cost for
    (documents × longest) positions. q, k, v [B, …, N, ·]; a decay per head [.., H], per token
    [B, …, N] or per channel [B, …, N, F] (a factored Δ ⊗ A is materialised)."""
    if docs is None:
        return kernel(q, k, v, **({} if decay is None else {"decay": decay}), **kw)
    if kw.get("initial_state") is not None or kw.get("return_state"):
        raise SeqError("packed rows: a linear mixer over documents takes no initial state and returns none")
    n = q.shape[-2]
    docs.check(q.shape[0], n, "linear attention (Triton)")
    rank = q.dim()
    if decay is not None and hasattr(decay, "materialize"):
        decay = decay.materialize()
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])

    def gather(x: Tensor) -> Tensor:                                        # [B, …, N, ·]
        return docs.to_padded(x.expand(*batch, *x.shape[-2:]), axis=-2)
    args = [gather(x) for x in (q, k, v)]
    if isinstance(decay, Tensor) and decay.dim() == rank:                   # per channel [B, …, N, F]
        decay = gather(decay)
    elif isinstance(decay, Tensor) and decay.dim() == rank - 1:             # per token [B, …, N]
        decay = docs.to_padded(decay.expand(*batch, n), axis=-1)
    out = kernel(*args, **({} if decay is None else {"decay": decay}), **kw)
    return docs.from_padded(out, axis=-2)


def toeplitz_by_document(kernel, v: Tensor, *args, pre: Tensor | None = None, post: Tensor | None = None,
                         docs: varlen.Documents | None = None, **kw):
    """A generated Triton Toeplitz kernel (SSM or long convolution, with its fused gates) over
    packed rows: v and the gates ``pre`` / ``post`` (broadcast to v) gathered into a [documents,
    …, longest, C] batch (zeros after each end), the kernel run with no state or history
    entering any document, the outputs scattered back; DSS keeps the row's normalisation length.
    v [B, …, N, C]."""
    gates = {k: x for k, x in (("pre", pre), ("post", post)) if x is not None}
    if docs is None:
        return kernel(v, *args, **gates, **kw)
    if kw.get("initial_state") is not None or kw.get("return_state"):
        raise SeqError("packed rows: a Toeplitz mix over documents takes no initial state and returns none")
    docs.check(v.shape[0], v.shape[-2], "toeplitz mix (Triton)")
    kw.setdefault("kernel_length", v.shape[-2])
    gates = {k: docs.to_padded(torch.broadcast_to(x, v.shape), axis=-2) for k, x in gates.items()}
    out = kernel(docs.to_padded(v, axis=-2), *args, **gates, **kw)
    return docs.from_padded(out, axis=-2)
