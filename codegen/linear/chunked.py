"""The chunked algorithm of causal linear attention with an optional decay (SPEC §1).

Notation. Per batch element (leading dims broadcast): features φ(q), φ(k) [N, F], values v
[N, V], log-decays lg_t (``kind``: None, "head" a constant per batch element, "token" [N],
"channel" [N, F], a diagonal over the key features). The recurrence is

    S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,   o_t = φ(q_t) S_t,   a_t = exp(lg_t).

Split N into chunks of C. With G_i = Σ_{t≤i} lg_t inside a chunk (inclusive) and S_prev
the state entering it:

    o_i    = Σ_{j≤i} (φ(q_i) ⊙ e^{G_i − G_j}) · φ(k_j) v_j   +   (φ(q_i) ⊙ e^{G_i}) S_prev
    S_last = e^{G_last} ⊙ S_prev + Σ_j (φ(k_j) ⊙ e^{G_last − G_j})ᵀ v_j

Every exponent above is ≤ 0 when lg ≤ 0, and the C×C decays are formed only where j ≤ i.
Two forms of the intra-chunk term, chosen by cost (``prefer_scan``):

* quadratic — the C×C score matrix per chunk, decayed, times V: matrix products only.
  For scalar decays the mask e^{G_i − G_j} is built for j ≤ i only. For a gate per key
  channel the mask cannot leave the contraction over F, so the scores are factorised
  (φ(q) ⊙ e^{G − m})(φ(k) ⊙ e^{m − G})ᵀ around the midpoint m of the block's cumulative
  gate; the exponents are then bounded by half the block's spread of G (≤ SPAN_LIMIT/2 =
  40, the only positive exponents anywhere). Where a chunk's spread could exceed SPAN_LIMIT
  (max |lg| · (C − 1), one reduction over the gate), the diagonal blocks shrink to
  sub-blocks small enough to factorise, and the pairs across sub-blocks use the boundary
  between them as reference (both factors ≤ 1), as flash-linear-attention's Triton
  kernels do. Gates of −20 per step then still give exact results.
* scan — when F·V is small next to C·(F + V) (Mamba's selective scan: F = 16, V = 1) the
  C×C scores cost far more than the states: run the recurrence inside every chunk at once
  (a loop over the C positions, vectorised over chunks), first from zero to get each
  chunk's local final state, then, once the entering states are known, again to emit
  outputs. Only multiplications by a_t ≤ 1: stable for any gate. In ``scan_form.py``:
  its own layout (batch dims last), in-place steps in reused buffers, and a hand-written
  backward that runs the adjoint recurrence the same chunked way.

Both forms walk the sequence in blocks of chunks sized to stay in cache (BLOCK_BUDGET),
carrying S between blocks; the loop over the chunk states of a block is a Python loop of
small steps (N/C in all). Every input is split once (``torch.split``/``unbind``): slicing
it block by block would make autograd zero-fill a full-size gradient per block.
Memory: forward without autograd O(N·V + block), with autograd O(N·(C + F + V) + N/C·F·V)
(the scan form: the inputs and N/C·F·V; both forms have hand-written backwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: largest spread of the cumulative log-gate inside one factorised diagonal block: the
#: factors e^{±(G − m)} then stay within e^{±40}, far from fp32 overflow (e^{88}).
SPAN_LIMIT = 80.0
#: |cumulative log-gate| above which a chunk's sums are formed in float64 (fp32 spacing 7.6e-6 at 100)
WIDE_SUMS = 100.0
#: at most this many sub-blocks per chunk (the off-diagonal keys cost a copy per sub-block)
MAX_SUBBLOCKS = 8
#: elements of one block's largest tensor: ~1 MB in fp32, so a block's working set stays in L2/L3
BLOCK_BUDGET = 1 << 18
#: tests set this to NaN: the preallocated output then starts as NaN, so a position that no
#: block writes fails loudly instead of returning whatever memory held
SCRATCH_FILL: float | None = None


@dataclass(frozen=True)
class OuterGate:
    """A per-channel log-gate of rank one, lg[..., t, f] = rate[..., t] · channel[..., f] (Mamba's
    Δ ⊗ A), kept factored: the scan form builds one position at a time in cache instead of
    reading an [*, N, F] tensor from memory. rate [*, N]; channel [*, F] (broadcast)."""

    rate: torch.Tensor
    channel: torch.Tensor

    def materialize(self) -> torch.Tensor:
        return self.rate[..., :, None] * self.channel[..., None, :]

    @property
    def lead(self) -> torch.Size:
        return torch.broadcast_shapes(self.rate.shape[:-1], self.channel.shape[:-1])


def prefer_scan(f: int, v: int, chunk: int) -> bool:
    """The scan form when the states (F·V per position) are cheap next to the scores
    (C·(F + V) multiply-adds per position, matrix products ~16× faster per element)."""
    return 16 * f * v <= chunk * (f + v)


def chunked(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, lg: torch.Tensor | None, kind: str | None,
            state: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal chunked linear attention. ``state`` [*batch, F, V] is the entering state (full
    batch shape); returns (o [*batch, N, V], final state)."""
    n, f, dv = fq.shape[-2], fq.shape[-1], v.shape[-1]
    batch = state.shape[:-2]
    gate = (lg.rate, lg.channel) if isinstance(lg, OuterGate) else (lg,)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (fq, fk, v, state, *gate))
    if prefer_scan(f, dv, chunk):
        from codegen.linear.scan_form import scan

        return scan(fq, fk, v, lg, kind, state, chunk, grad)
    if isinstance(lg, OuterGate):
        lg = lg.materialize()
    max_gate = 0.0
    if kind == "channel" and lg.numel():
        lo, hi = lg.detach().aminmax()
        max_gate = max(-float(lo), float(hi))
    plan = _plan(n, chunk, math.prod(batch), f, dv, max_gate if kind == "channel" else 0.0)
    # cumulative gates beyond ±WIDE_SUMS: float64 sums (fp32's spacing there exceeds 1e-5)
    wide = max_gate * chunk > WIDE_SUMS and fq.dtype != torch.float64
    if grad and all(sub == c for _, c, sub in plan):
        # the quadratic form without sub-blocks has a hand-written, recomputing backward
        # (chunked_grad.py): ~2× faster than autograd through the blocks, O(N/C·F·V) saved
        from codegen.linear.chunked_grad import chunked_with_grad

        return chunked_with_grad(fq, fk, v, lg, kind, state, plan, wide)
    return run_blocks(fq, fk, v, lg, kind, state, plan, wide, grad)


def run_blocks(fq, fk, v, lg, kind, state, plan, wide: bool, grad: bool,
               keep: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward over the ``plan``'s blocks. ``keep``: a list that receives, per block of the
    quadratic form, the states entering its chunks [*, g, F, V] (for the backward)."""
    n, dv = fq.shape[-2], v.shape[-1]
    batch = state.shape[:-2]
    # one split per input: its backward is a single concatenation (slicing block by block
    # would zero-fill and add a full-size gradient per block)
    sizes = [g * c for g, c, _ in plan]
    pieces = zip(*(split(x, sizes) for x in (fq, fk, v)), split_gate(lg, kind, sizes))
    # without autograd, blocks write into one output (a cat would hold the output twice)
    out = None if grad else fq.new_empty(*batch, n, dv)
    if out is not None and SCRATCH_FILL is not None:
        out.fill_(SCRATCH_FILL)
    outs, pos, masks = [], 0, {}
    for (g, c, sub), args in zip(plan, pieces):
        if kind == "head" and c not in masks:
            masks[c] = head_masks(lg, c)
        o, state = _quadratic_block(*args, kind, state, c, sub, masks.get(c), wide, keep)
        if out is None:
            outs.append(o)
        else:
            out[..., pos:pos + g * c, :] = o
        pos += g * c
    if out is not None:
        return out, state
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)), state


def _plan(n: int, chunk: int, batch: int, f: int, dv: int, max_gate: float) -> list[tuple[int, int, int]]:
    """Blocks of the sequence, in order: (chunks g, chunk size C, diagonal sub-block size)."""
    plan, pos = [], 0
    while pos < n:
        c = min(chunk, n - pos)
        sub = c
        if max_gate * (c - 1) > SPAN_LIMIT:
            sub = int(SPAN_LIMIT / max_gate) + 1
            c = sub * max(1, min(c // sub, MAX_SUBBLOCKS))
        chunks = (n - pos) // c
        per_block = max(1, BLOCK_BUDGET // max(1, batch * max(f, dv, chunk) * c))
        for b0 in range(0, chunks, per_block):
            plan.append((min(per_block, chunks - b0), c, sub))
        pos += chunks * c
    return plan


def split(x: torch.Tensor, sizes: list[int], dim: int = -2) -> tuple[torch.Tensor, ...]:
    return (x,) if len(sizes) == 1 else torch.split(x, sizes, dim=dim)


def split_gate(lg, kind: str | None, sizes: list[int]):
    if isinstance(lg, OuterGate):
        return [OuterGate(r, lg.channel) for r in split(lg.rate, sizes, -1)]
    if kind == "token":
        return split(lg, sizes, -1)
    if kind == "channel":
        return split(lg, sizes, -2)
    return [lg] * len(sizes)


def head_masks(lg: torch.Tensor, c: int) -> tuple[torch.Tensor, ...]:
    """For a constant log-decay λ per batch element: the C×C mask e^{(i−j)λ} (j ≤ i), the
    query factors e^{(i+1)λ}, the key factors e^{(C−1−j)λ} and the chunk's decay e^{Cλ}."""
    i = torch.arange(c, device=lg.device, dtype=lg.dtype)
    lam = lg[..., None]
    diff = i[:, None] - i[None, :]
    mask = torch.exp(torch.where(diff >= 0, diff * lam[..., None], float("-inf")))   # [*lead, C, C]
    qd = torch.exp((i + 1) * lam)                                                      # [*lead, C]
    kd = torch.exp((c - 1 - i) * lam)
    return mask, qd, kd, torch.exp(c * lg)


# ---- the quadratic form ----------------------------------------------------------------


def _exp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """e^x in ``dtype`` for an exponent formed in a wider type."""
    return torch.exp(x.to(dtype))


def _quadratic_block(q, k, v, lg, kind, state, c, sub, masks, wide, keep=None):
    """One block of g whole chunks: q, k [*, g·C, F], v [*, g·C, V]; returns o and the state.
    ``wide``: form a per-channel gate's cumulative sums in float64 (large |G|)."""
    g = q.shape[-2] // c
    q, k, v = (x.unflatten(-2, (g, c)) for x in (q, k, v))                            # [*, g, C, ·]
    if kind is None:
        scores = (q @ k.transpose(-1, -2)).tril_()                                      # read 2·C·F, write C² per chunk
        q_in, k_out, decay = q, k, None
    elif kind == "head":
        mask, qd, kd, cd = masks
        scores = (q @ k.transpose(-1, -2)) * mask[..., None, :, :]
        q_in, k_out = q * qd[..., None, :, None], k * kd[..., None, :, None]
        decay = cd[..., None, None, None]                                               # per chunk: same for all
    elif kind == "token":
        # the sums in float64 (N numbers: free): after a reset (log a = −500, say) G is large and
        # fp32's spacing there would blur the differences between the slow steps that follow
        G = torch.cumsum(lg.unflatten(-1, (g, c)).to(torch.float64), dim=-1)            # [*, g, C]
        last = G[..., -1:]
        diff = G[..., :, None] - G[..., None, :]
        tri = torch.ones(c, c, dtype=torch.bool, device=q.device).tril_()
        mask = _exp(diff.masked_fill(~tri, float("-inf")), q.dtype)                    # e^{G_i − G_j}, j ≤ i only
        scores = (q @ k.transpose(-1, -2)) * mask
        q_in, k_out = q * _exp(G, q.dtype)[..., None], k * _exp(last - G, q.dtype)[..., None]
        decay = _exp(last, q.dtype)[..., None]                                          # [*, g, 1, 1]
    else:
        scores, q_in, k_out, decay = _channel_scores(q, k, lg.unflatten(-2, (g, c)), c, sub, wide)
    kv = (k_out.transpose(-1, -2) @ v).unbind(-3)                                        # g × [*, F, V]
    if decay is not None:
        decay = decay.unbind(-3) if decay.shape[-3] > 1 else [decay[..., 0, :, :]] * g
    entering = []
    for i in range(g):                                 # S for each chunk: g small steps
        entering.append(state)
        state = state + kv[i] if decay is None else torch.addcmul(kv[i], decay[i], state)
    entering = torch.stack(entering, dim=-3)                                             # [*, g, F, V]
    if keep is not None:
        keep.append(entering)
    o = (scores @ v).add_(q_in @ entering)                                               # read C²+C·F, write C·V
    return o.flatten(-3, -2), state


def _channel_scores(q, k, lg, c, sub, wide):
    """Scores for a gate per key channel: (q ⊙ e^{G_i−G_j}) · k for j ≤ i, never exp(> 0) past
    e^{SPAN_LIMIT/2}. Returns (scores, φ(q) ⊙ e^{G}, φ(k) ⊙ e^{G_last − G}, e^{G_last}).
    Exponents are formed in float64 when ``wide`` (then cast: the exps stay in q's dtype)."""
    dt = q.dtype
    G = torch.cumsum(lg.to(torch.float64) if wide else lg, dim=-2)                       # inclusive, over C
    last = G[..., -1:, :]
    decay = _exp(last, dt).transpose(-1, -2)                                             # [*, g, F, 1]
    if sub == c:
        mid = 0.5 * (G[..., :1, :] + last)
        e = _exp(G - mid, dt)                                                            # within e^{±spread/2}
        qt, kt = q * e, k / e
        scores = (qt @ kt.transpose(-1, -2)).tril_()
        return scores, qt * _exp(mid, dt), kt * _exp(last - mid, dt), decay
    s = c // sub
    Gs, qs, ks = (x.unflatten(-2, (s, sub)) for x in (G, q, k))                          # [*, g, s, sub, F]
    mid = 0.5 * (Gs[..., :1, :] + Gs[..., -1:, :])
    e = _exp(Gs - mid, dt)
    diag = ((qs * e) @ (ks / e).transpose(-1, -2)).tril_()                               # [*, g, s, sub, sub]
    eye = torch.eye(s, dtype=dt, device=q.device)
    scores = (diag[..., :, :, None, :] * eye[:, None, :, None]).flatten(-4, -3).flatten(-2, -1)
    if s > 1:
        # query sub-block I ≥ 1 against the keys before it, through r_I = G at the end of
        # sub-block I−1: e^{G_i − r_I} ≤ 1 and e^{r_I − G_j} ≤ 1 (masked to j < I·sub first)
        ref = Gs[..., :-1, -1:, :]                                                       # [*, g, s−1, 1, F]
        qh = qs[..., 1:, :, :] * _exp(Gs[..., 1:, :, :] - ref, dt)
        width = (s - 1) * sub
        before = (torch.arange(width, device=q.device)[None, :] < sub * torch.arange(1, s, device=q.device)[:, None])
        expo = (ref - G[..., None, :width, :]).masked_fill(~before[..., None], float("-inf"))
        kh = k[..., None, :width, :] * _exp(expo, dt)                                    # [*, g, s−1, width, F]
        off = qh @ kh.transpose(-1, -2)                                                  # [*, g, s−1, sub, width]
        scores = scores + F.pad(off, (0, c - width, 0, 0, 1, 0)).flatten(-3, -2)
    return scores, q * _exp(G, dt), k * _exp(last - G, dt), decay
