"""The PyTorch runtime of the softmax family: ``softmax_attention`` and ``given_attention``.

Algorithms (SPEC §1; the cost model picks one, a hint may force it):

- ``materialized``: scores [.., Nq, Nk] in memory, the dense mask, softmax, @ v. O(N²).
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` — only for a full or a
  plain causal mask (Nq = Nk) without bias or cap; anything else is refused with the reason.
- ``tiled``: online softmax over the blocks the mask's schedule lists (``tiled.py``),
  O(N · block) memory. Content-based masks (buckets & structured terms) are first sorted
  by bucket so that each bucket's pairs pack into a few tiles; block maps and other
  data-dependent compositions run on the tile grid their bounds give.

Shapes: q [..., Nq, Dk], k [..., Nk, Dk], v [..., Nk, Dv] with broadcastable leading
dims; the heads axis is dim −3 when present (per-head masks and biases use it). Rows
with no kept key give 0.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from codegen import masks as M
from codegen.distributed.context import active as _sp_active
from codegen.softmax import plan as P
from codegen.softmax import tiled as T
from codegen.softmax.scores import bias_heads, normalize_bias, positional_bias
from codegen.torch.decode import stateful

ALGORITHMS = ("materialized", "sdpa", "tiled")
#: packed rows with at most this many documents run the tiled algorithm once per document
PER_DOCUMENT_CALLS = 256
#: a causal mask over packed rows runs on the padded batch of documents while that batch holds
#: at most this many times the pairs inside the documents (see ``_pad_documents``)
PAD_WASTE = 4.0
log = logging.getLogger("seqdsl.codegen.softmax")
_said: set[str] = set()


def _note(reason: str) -> None:
    """Log a path decision once per process (no silent fallbacks)."""
    if reason not in _said:
        _said.add(reason)
        log.info(reason)


@stateful("softmax")   # prefill / step: a KV cache (softmax/step.py)
def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: M.Mask | None = None, *, scale: float,
                      bias=None, cap: float | None = None, algorithm: str = "tiled", block: int = 64,
                      docs=None) -> Tensor:
    """softmax(mask ∘ (scale · q kᵀ + bias), capped by cap·tanh(·/cap)) @ v.

    ``mask``: a :mod:`codegen.masks` mask (None: full). ``bias``: None, ``(kind, table)`` with
    kind ``alibi`` (table: slopes [H] or None) or ``relative`` (table [H, buckets]).
    ``algorithm``: materialized | sdpa | tiled; ``block``: the tile size of ``tiled``.
    Returns [..., Nq, Dv]; query rows with no kept key are 0. ``docs``: the documents of a
    packed call (``codegen.varlen.Documents``; q laid out [B, …, N, Dk]): the mask is
    intersected with ``M.Document`` (tiles across documents skipped; SDPA gets the dense mask).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown softmax algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if _sp_active() is not None:       # the sequence split over ranks: ring or Ulysses (codegen/distributed)
        from codegen.distributed import hooks
        return hooks.softmax(q, k, v, mask, scale=scale, bias=bias, cap=cap, algorithm=algorithm, block=block,
                             docs=docs)
    mask = M.Full() if mask is None else M.simplify(mask)
    if docs is not None:
        from codegen.varlen import mixer_ids
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"packed rows: attention of {q.shape[-2]} queries to {k.shape[-2]} keys cannot keep "
                             "documents apart (a document mask is for self-attention)")
        rest = mask
        mask = M.simplify(M.And(mask, M.Document(mixer_ids(docs, q, "softmax attention"))))
        if algorithm == "sdpa":
            return _sdpa_documents(q, k, v, mask, scale, bias, cap)
        if algorithm == "tiled" and rest.static and hasattr(docs, "count"):
            if _pad_documents(rest, docs):
                return _tiled_padded(q, k, v, rest, docs, scale, bias, cap, block)
            if docs.count <= PER_DOCUMENT_CALLS:
                return _tiled_documents(q, k, v, rest, docs, scale, bias, cap, block)
    bias = normalize_bias(bias)
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    heads = batch[-1] if batch else 1
    nq, nk = q.shape[-2], k.shape[-2]
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != nk:
        raise ValueError(f"attention shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    bias_heads(bias, heads)
    if nq == 0 or nk == 0:     # no query, or no key for any query: every row is 0
        return torch.zeros(*batch, nq, v.shape[-1], dtype=v.dtype, device=v.device)
    qc, kc, vc = (_canon(x, batch) for x in (q, k, v))
    if algorithm == "materialized":
        out = _materialized(qc, kc, vc, mask, scale, bias, cap, batch)
    elif algorithm == "sdpa":
        out = _sdpa(qc, kc, vc, mask, scale, bias, cap)
    else:
        if block < 1:
            raise ValueError(f"block must be positive, got {block}")
        out = _tiled(qc, kc, vc, mask, scale, bias, cap, batch, block)
    return out.reshape(*batch, nq, v.shape[-1])


def given_attention(scores: Tensor, v: Tensor, mask: M.Mask | None = None) -> Tensor:
    """softmax(mask ∘ scores) @ v for scores [..., Nq, Nk] given directly (Synthesizer)."""
    if _sp_active() is not None:
        from codegen.distributed import hooks
        hooks.given()
    mask = M.Full() if mask is None else M.simplify(mask)
    batch = tuple(torch.broadcast_shapes(scores.shape[:-2], v.shape[:-2]))
    keep = _dense(mask, scores.shape[-2], scores.shape[-1], scores.device, batch[-1] if batch else 1)
    return torch.matmul(masked_softmax(scores, keep), v)


# ---- shared pieces -----------------------------------------------------------------


def _canon(x: Tensor, batch: tuple[int, ...]) -> Tensor:
    """[*batch, N, D] → [B, H, N, D] (a view when x already has the batch dims)."""
    heads = batch[-1] if batch else 1
    x = x.expand(*batch, *x.shape[-2:])
    return x.reshape(math.prod(batch[:-1]), heads, *x.shape[-2:])


def _dense(mask: M.Mask, nq: int, nk: int, device, heads: int) -> Tensor | None:
    """The dense keep-mask broadcastable against [..., H, Nq, Nk]; None for a full mask."""
    if isinstance(mask, M.Full):
        return None
    return mask.dense(nq, nk, device=device, heads=heads)


def masked_softmax(s: Tensor, keep: Tensor | None) -> Tensor:
    """softmax over the last axis with masked entries removed; all-masked rows give 0
    (and zero gradients, never NaN)."""
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    e = torch.exp(s - torch.where(torch.isinf(m), 0, m))
    d = e.sum(-1, keepdim=True)
    return e / torch.where(d == 0, 1, d)


# ---- algorithms --------------------------------------------------------------------


def _materialized(q, k, v, mask, scale, bias, cap, batch):
    nq, nk, heads = q.shape[-2], k.shape[-2], q.shape[1]
    s = torch.matmul(q, k.transpose(-1, -2)) * scale                        # read N·Dk twice, write Nq·Nk
    if bias is not None:
        i = torch.arange(nq, device=q.device)[:, None]
        j = torch.arange(nk, device=q.device)[None, :]
        s = s + positional_bias(bias[0], bias[1], i, j, heads, s.dtype)      # [Hb, Nq, Nk]
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    keep = _dense(mask, nq, nk, q.device, heads)
    if keep is not None:
        keep = P.to_bh(keep, keep.dim() - 2, batch)
    return torch.matmul(masked_softmax(s, keep), v)


def sdpa_refusal(mask: M.Mask, nq: int, nk: int, bias, cap) -> str | None:
    """Why SDPA cannot compute this attention (None: it can)."""
    if bias is not None:
        return f"sdpa takes no positional bias ({bias[0]}); use tiled or materialized"
    if cap is not None:
        return "sdpa has no soft cap; use tiled or materialized"
    if isinstance(mask, M.Full):
        return None
    if isinstance(mask, M.Causal) and mask.offset == 0:
        return None if nq == nk else f"sdpa's causal mask needs Nq = Nk (got {nq} × {nk}); use tiled"
    return f"sdpa only handles a full or a plain causal mask, not {mask}; use tiled"


def _sdpa(q, k, v, mask, scale, bias, cap):
    reason = sdpa_refusal(mask, q.shape[-2], k.shape[-2], bias, cap)
    if reason is not None:
        raise ValueError(reason)
    return F.scaled_dot_product_attention(q, k, v, is_causal=isinstance(mask, M.Causal), scale=scale)


def _sdpa_documents(q, k, v, mask, scale, bias, cap):
    """SDPA over packed rows: the documents (and a causal mask) as SDPA's dense boolean mask
    (O(N²) booleans; the tiled algorithm skips the tiles instead)."""
    rest: M.Mask = M.Full()
    for t in M.conjuncts(mask):
        rest = rest if isinstance(t, M.Document) else M.simplify(M.And(rest, t))
    reason = sdpa_refusal(rest, q.shape[-2], k.shape[-2], bias, cap)
    if reason is not None:
        raise ValueError(reason)
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    keep = mask.dense(q.shape[-2], k.shape[-2], device=q.device, heads=batch[-1] if batch else 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)   # every row keeps its diagonal


def _pad_documents(mask: M.Mask, docs) -> bool:
    """Run packed rows as a [documents, longest] batch: when the mask is causal (no query sees a
    key after it, so the zeros after a document's end are never read) and the batch wastes at
    most PAD_WASTE × the pairs inside documents. One fused call then beats the others on a CPU
    (16 documents of 64-1024 tokens, H 4, D 64, forward + backward on a loaded 2-core VM:
    padded batch 6.0 s, one call per document 8.2 s, the data-dependent tile plan 10.6 s)."""
    if not any(isinstance(t, M.Causal) and t.offset <= 0 for t in M.conjuncts(mask)):
        return False
    _, _, length, longest = docs._layout
    return docs.count * longest ** 2 <= PAD_WASTE * float((length.double() ** 2).sum())


def _tiled_padded(q, k, v, mask, docs, scale, bias, cap, block) -> Tensor:
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    q, k, v = (docs.to_padded(x.expand(*batch, *x.shape[-2:]), axis=-2) for x in (q, k, v))
    out = softmax_attention(q, k, v, mask, scale=scale, bias=bias, cap=cap, algorithm="tiled", block=block)
    return docs.from_padded(out, axis=-2)


def _tiled_documents(q, k, v, mask, docs, scale, bias, cap, block) -> Tensor:
    """Tiled attention over packed rows with at most PER_DOCUMENT_CALLS documents: one call per
    document with the (static, translation-invariant) mask, so that each uses the cached plan
    of its length and its fused diagonal squares — the varlen loop of FlashAttention. Visits
    exactly the tiles inside documents, as the ``Document`` tile plan does, at the static plan's
    speed (for masks that are not causal, or documents too unequal to pad)."""
    batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    q, k, v = (x.expand(*batch, *x.shape[-2:]) for x in (q, k, v))
    row, start, length, _ = docs._layout
    rows: list[list[Tensor]] = [[] for _ in range(batch[0])]
    for r, s, n in zip(row.tolist(), start.tolist(), length.tolist()):
        part = [x[r:r + 1, ..., s:s + n, :] for x in (q, k, v)]
        rows[r].append(softmax_attention(*part, mask, scale=scale, bias=bias, cap=cap, algorithm="tiled",
                                         block=block))
    return torch.cat([torch.cat(parts, dim=-2) for parts in rows], dim=0)


def _tiled(q, k, v, mask, scale, bias, cap, batch, block):
    B, H, nq, D = q.shape
    nk, Dv = k.shape[-2], v.shape[-1]
    flash = T.flash_available(q.device, q.dtype)
    kind, table = bias if bias is not None else (None, None)
    if cap is not None:
        _note("tiled softmax: a soft cap runs the plain matmul chunk kernel (the fused CPU kernel has no cap)")
    if table is not None and table.requires_grad:
        _note("tiled softmax: a trainable bias table runs the plain matmul chunk kernel (for its gradient)")
    if flash and cap is None and D != Dv:
        # the fused kernel wants one head size: zero columns change neither scores nor output
        w = max(D, Dv)
        q, k, v = F.pad(q, (0, w - D)), F.pad(k, (0, w - D)), F.pad(v, (0, w - Dv))
    split = None if mask.static else P.bucket_split(mask)
    if split is not None and bias is not None:
        _note("tiled softmax: buckets with a positional bias run unsorted (the bias needs original positions)")
        split = None
    if split is None:
        plan = P.make_plan(mask, nq, nk, block, block, H, batch, device=q.device)
        out = T.TiledAttention.apply(q, k, v, table, T.Config(plan, scale, cap, kind, flash))
        return out[..., :Dv]
    buckets, rest = split
    buckets._check(nq, nk)
    ids = P.to_bh(buckets.ids.to(q.device), buckets.ids.dim() - 1, batch)      # [Lb, Lh, N]
    perm = torch.sort(ids, dim=-1, stable=True).indices
    sorted_mask = P.SortedBuckets(ids.gather(-1, perm), perm, rest)
    plan = P.make_plan(sorted_mask, nq, nk, block, block, H, (B, H), device=q.device)
    qs, ks, vs = (_permute(x, perm) for x in (q, k, v))
    out = T.TiledAttention.apply(qs, ks, vs, table, T.Config(plan, scale, cap, kind, flash))
    return _permute(out, perm.argsort(-1))[..., :Dv]


def _permute(x: Tensor, perm: Tensor) -> Tensor:
    """x [B, H, N, D] reordered along N: position p takes x[..., perm[p], :]."""
    if perm.shape[0] == 1 and perm.shape[1] == 1:
        return x[:, :, perm[0, 0]]
    idx = perm.expand(*x.shape[:2], perm.shape[-1])[..., None].expand(*x.shape[:3], x.shape[-1])
    return x.gather(2, idx)
