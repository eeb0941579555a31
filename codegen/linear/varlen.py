"""Linear and decayed attention over packed rows: the state resets at every document start.

With document ids d_t (``codegen/varlen.py``) the recurrence of ``torch_impl.py`` becomes

    S_t = [d_t = d_{t−1}] · a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,    o_t = φ(q_t) S_t

i.e. M_ij = (φ(q_i)·φ(k_j)) L_ij [d_i = d_j]: each document is mixed as if it stood alone
(FlashAttention's ``cu_seqlens``, fla's ``cu_seqlens`` for its chunked kernels). The three
algorithms keep their costs:

- ``quadratic``: the N×N matrix with the same-document mask.
- ``recurrent``: the loop, the carried state zeroed where a document starts.
- ``chunked``: inside a chunk the C×C quadratic form with the same-document mask; across
  chunks the state S entering chunk c is read only by the positions of the document that
  was open at the chunk's start, and it is carried over the chunk only when the chunk holds
  no document start:

      o_i    = intra_i + [d_i = d_prev] (φ(q_i) ⊙ e^{G_i}) S_prev
      S_last = [d_last = d_prev] e^{G_last} ⊙ S_prev + Σ_j [d_j = d_last] (φ(k_j) ⊙ e^{G_last−G_j})ᵀ v_j

  (G_i: the log-decays summed from the chunk's start to i; every exponent is a sum of
  its own terms, ≤ 0). O(N·C·(F + V) + N·F·V) as the chunked algorithm without documents,
  written with autograd (no hand-written backward; per-channel gates form the C×C decays
  per channel, O(N·C·F) memory).
- non-causal: one state per document, o_i = φ(q_i) Σ_{j: d_j = d_i} φ(k_j)ᵀ v_j.

Lengths need not be multiples of the chunk: the last chunk is padded with zero keys and
values and no decay (nothing changes the state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from codegen.linear.chunked import OuterGate, prefer_scan


def _per_position(lg, kind: str | None, batch: tuple[int, ...], n: int, f: int, like: Tensor):
    """The log-decays as (x [*batch, N] scalar per position, None) or (None, [*batch, N, F])."""
    if isinstance(lg, OuterGate):
        lg = lg.materialize()
        kind = "channel"
    if kind is None:
        return like.new_zeros(*batch, n), None
    if kind == "head":
        return lg[..., None].expand(*batch, n), None
    if kind == "token":
        return lg.expand(*batch, n), None
    return None, lg.expand(*batch, n, f)


def segsum(x: Tensor) -> Tensor:
    """[..., T] -> [..., T, T]: Σ_{t=j+1..i} x_t for j ≤ i (−inf above the diagonal), each
    entry summed from its own terms."""
    t = x.shape[-1]
    strict = torch.ones(t, t, dtype=torch.bool, device=x.device).tril_(-1)
    summed = torch.cumsum(x[..., :, None].expand(*x.shape, t).masked_fill(~strict, 0), dim=-2)
    return summed.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril_(), float("-inf"))


def varlen_linear(fq: Tensor, fk: Tensor, v: Tensor, lg, kind: str | None, ids: Tensor, state: Tensor,
                  algorithm: str, chunk: int, causal: bool) -> tuple[Tensor, Tensor]:
    """Packed linear attention. fq, fk [*, N, F]; v [*, N, V]; ``ids`` [*, N] (broadcast) the
    canonical document ids; ``state`` [*batch, F, V] the state entering the row (it belongs to
    the row's first document). Returns (o [*batch, N, V], the state at the end of the row)."""
    batch = state.shape[:-2]
    n, f = fq.shape[-2], fq.shape[-1]
    fq, fk, v = fq.expand(*batch, n, f), fk.expand(*batch, n, f), v.expand(*batch, n, v.shape[-1])
    ids = ids.expand(*batch, n)
    if not causal:
        return _global(fq, fk, v, ids, state)
    x, xc = _per_position(lg, kind, batch, n, f, fq)
    if algorithm == "recurrent":
        return _recurrent(fq, fk, v, x, xc, ids, state)
    if algorithm == "quadratic":
        return _chunked(fq, fk, v, x, xc, ids, state, max(n, 1))
    if xc is not None and prefer_scan(f, v.shape[-1], chunk):
        return _chunked_scan(fq, fk, v, xc, ids, state, chunk)
    return _chunked(fq, fk, v, x, xc, ids, state, chunk)


def _global(fq, fk, v, ids, state):
    """Non-causal: one state per document (the entering state counts for the first)."""
    docs = int(ids.max()) + 1 if ids.numel() else 1
    onehot = F.one_hot(ids, docs).to(fq.dtype)                                          # [*, N, docs]
    per_doc = torch.einsum("...nd,...nf,...nv->...dfv", onehot, fk, v)                  # read N(F+V), write docs·F·V
    per_doc = torch.cat([per_doc[..., :1, :, :] + state[..., None, :, :], per_doc[..., 1:, :, :]], dim=-3)
    o = torch.einsum("...nd,...nf,...dfv->...nv", onehot, fq, per_doc)
    return o, per_doc[..., -1, :, :]


def _recurrent(fq, fk, v, x, xc, ids, state):
    """The loop over positions; ``keep`` zeroes the carried state where a document starts."""
    n = fq.shape[-2]
    same = torch.ones_like(ids, dtype=fq.dtype)
    same[..., 1:] = (ids[..., 1:] == ids[..., :-1]).to(fq.dtype)
    outs = []
    for t in range(n):
        a = torch.exp(x[..., t])[..., None, None] if x is not None else torch.exp(xc[..., t, :])[..., None]
        state = (a * same[..., t, None, None]) * state + fk[..., t, :, None] * v[..., t, None, :]
        outs.append((fq[..., t, :, None] * state).sum(-2))
    return torch.stack(outs, dim=-2), state


def _chunked(fq, fk, v, x, xc, ids, state, chunk):
    n, f, dv = fq.shape[-2], fq.shape[-1], v.shape[-1]
    batch = fq.shape[:-2]
    c = max(1, min(chunk, n))
    nc = -(-n // c)
    pad = nc * c - n
    if pad:     # zero keys/values, no decay, the last id repeated: the state does not change
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
        x = None if x is None else F.pad(x, (0, pad))
        xc = None if xc is None else F.pad(xc, (0, 0, 0, pad))
        ids = torch.cat([ids, ids[..., -1:].expand(*batch, pad)], dim=-1)
    q4, k4, v4 = (t.reshape(*batch, nc, c, t.shape[-1]) for t in (fq, fk, v))
    d4 = ids.reshape(*batch, nc, c)
    same = d4[..., :, None] == d4[..., None, :]                                          # [*, nc, C, C]
    if x is not None:
        x4 = x.reshape(*batch, nc, c)
        seg = segsum(x4)                                                                  # [*, nc, C, C]
        decay = torch.exp(seg).masked_fill(~same, 0)
        scores = (q4 @ k4.transpose(-1, -2)) * decay                                     # C×C per chunk
        q_in = q4 * torch.exp(torch.cumsum(x4, dim=-1))[..., None]                        # e^{G_i}
        k_out = k4 * torch.exp(seg[..., -1, :])[..., None]                                # e^{G_last − G_j}
        total = torch.exp(x4.sum(-1))[..., None, None]                                    # [*, nc, 1, 1]
    else:
        xc4 = xc.reshape(*batch, nc, c, f)
        seg = segsum(xc4.transpose(-1, -2))                                               # [*, nc, F, C, C]
        decay = torch.exp(seg).masked_fill(~same[..., None, :, :], 0)
        scores = torch.einsum("...if,...jf,...fij->...ij", q4, k4, decay)
        q_in = q4 * torch.exp(torch.cumsum(xc4, dim=-2))
        k_out = k4 * torch.exp(seg[..., -1, :]).transpose(-1, -2)
        total = torch.exp(xc4.sum(-2))[..., None]                                         # [*, nc, F, 1]
    intra = scores @ v4                                                                   # [*, nc, C, V]
    last = d4[..., -1:]                                                                   # [*, nc, 1]
    local = (k_out * (d4 == last)[..., None].to(k_out.dtype)).transpose(-1, -2) @ v4      # [*, nc, F, V]
    prev = torch.cat([d4[..., :1, :1], d4[..., :-1, -1:]], dim=-2)                        # id open at each chunk start
    reads = (d4 == prev).to(fq.dtype)[..., None]                                          # [*, nc, C, 1]
    carries = (last == prev).to(fq.dtype)[..., None]                                      # [*, nc, 1, 1]
    entering = []
    for i in range(nc):                                                                   # N/C small steps
        entering.append(state)
        state = carries[..., i, :, :] * total[..., i, :, :] * state + local[..., i, :, :]
    s_in = torch.stack(entering, dim=-3)                                                  # [*, nc, F, V]
    o = intra + reads * (q_in @ s_in)
    return o.reshape(*batch, nc * c, dv)[..., :n, :], state


def _chunked_scan(fq, fk, v, xc, ids, state, chunk):
    """Per-channel gates with few values per state (Mamba's selective scan: F = 16, V = 1): the
    C×C decays per channel would cost N·C·F memory, so inside every chunk the recurrence runs
    position by position, vectorised over all chunks at once (C steps, not N), with the state
    zeroed where a document starts; across chunks the entering state as in :func:`_chunked`.
    Memory O(N·F·V) (the states autograd keeps), the gate's own size when V = 1."""
    n, f, dv = fq.shape[-2], fq.shape[-1], v.shape[-1]
    batch = fq.shape[:-2]
    c = max(1, min(chunk, n))
    nc = -(-n // c)
    pad = nc * c - n
    if pad:
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
        xc = F.pad(xc, (0, 0, 0, pad))
        ids = torch.cat([ids, ids[..., -1:].expand(*batch, pad)], dim=-1)
    q4, k4, v4, g4 = (t.reshape(*batch, nc, c, t.shape[-1]) for t in (fq, fk, v, xc))
    d4 = ids.reshape(*batch, nc, c)
    same = torch.ones_like(d4, dtype=fq.dtype)
    same[..., 1:] = (d4[..., 1:] == d4[..., :-1]).to(fq.dtype)                        # 0 where a document starts
    local = fq.new_zeros(*batch, nc, f, dv)
    outs = []
    for t in range(c):                                                                   # C steps, all chunks at once
        a = torch.exp(g4[..., t, :])[..., None] * same[..., t, None, None]
        local = a * local + k4[..., t, :, None] * v4[..., t, None, :]
        outs.append((q4[..., t, :, None] * local).sum(-2))
    intra = torch.stack(outs, dim=-2)                                                    # [*, nc, C, V]
    last = d4[..., -1:]
    prev = torch.cat([d4[..., :1, :1], d4[..., :-1, -1:]], dim=-2)
    reads = (d4 == prev).to(fq.dtype)[..., None]
    carries = (last == prev).to(fq.dtype)[..., None]
    total = torch.exp(g4.sum(-2))[..., None]                                             # [*, nc, F, 1]
    entering = []
    for i in range(nc):
        entering.append(state)
        state = carries[..., i, :, :] * total[..., i, :, :] * state + local[..., i, :, :]
    s_in = torch.stack(entering, dim=-3)
    q_in = q4 * torch.exp(torch.cumsum(g4, dim=-2))
    o = intra + reads * (q_in @ s_in)
    return o.reshape(*batch, nc * c, dv)[..., :n, :], state
