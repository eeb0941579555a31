"""PyTorch runtime of the LINEAR / KERNEL and DECAYED / GATED families (SPEC §1).

One entry, :func:`linear_attention`, computes, per batch element (leading dims broadcast),

    S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,      o_t = scale · φ(q_t) S_t

i.e. the mixing matrix M = scale · (φ(Q) φ(K)ᵀ) ∘ L with L_ij = Π_{t=j+1..i} a_t (j ≤ i), with
three algorithms (SPEC §1: quadratic N²d, recurrent Nd², chunked N·C·d + N·d²; see
``chunked.py`` for the last). :func:`selective_scan` is Mamba's scan written in that form.

Conventions:

- ``decay`` granularity is read from its rank (q has rank R): rank ≤ R−2 (or a float) is one
  rate per head, broadcast against the leading dims (RetNet's γ of shape [H]); rank R−1 is
  one per token [..., N]; rank R is one per key feature [..., N, F] (GLA, Mamba). Rates a_t
  are in (0, 1] (``log_decay``: log a_t ≤ 0). Positive log-rates are computed exactly but
  are only as stable as e^{Σ lg} is representable. A per-channel log-gate of rank one
  (Mamba's Δ ⊗ A) can be passed factored as ``chunked.OuterGate(rate [..., N], channel
  [..., F])``: the chunked scan form then never materialises the [..., N, F] gate.
- ``norm="sum"`` divides by the same sum with v replaced by 1: o_i = Σ_j M_ij v_j / Σ_j M_ij
  (Katharopoulos et al.; ``scale`` cancels). No epsilon is added: with non-positive
  features (identity, relu, spectral) the denominator can vanish, and that shows as inf/nan.
  The state then carries the normaliser as an extra last column: [..., F, V + 1].
- States are [..., F, V] with F the feature width (Dk, or m / 2m for favor / spectral),
  unscaled (``scale`` multiplies the output). ``initial_state`` broadcasts against the batch.
- Non-causal: o = scale · φ(Q)(S_0 + φ(K)ᵀV); the returned state is that global sum.
- fp16/bf16 inputs are computed in fp32 and the output cast back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from codegen.distributed.context import active as _sp_active
from codegen.linear.chunked import OuterGate, chunked
from codegen.linear.features import feature_map, feature_width
from codegen.torch.decode import stateful

ALGORITHMS = ("quadratic", "recurrent", "chunked")
NORMS = ("none", "sum")


@stateful("linear")   # prefill / step: the recurrent state (linear/step.py)
def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, feature: str = "identity",
                     projection: torch.Tensor | None = None, norm: str = "none", causal: bool = True,
                     decay: float | torch.Tensor | None = None, log_decay: bool = False, scale: float = 1.0,
                     algorithm: str = "chunked", chunk: int = 64, initial_state: torch.Tensor | None = None,
                     return_state: bool = False, docs=None,
                     doc_ids: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Kernel / decayed linear attention. q, k: [..., N, Dk]; v: [..., N, Dv] -> [..., N, Dv]
    (and the final state [..., F, Dv(+1)] with ``return_state``). See the module docstring.
    Packed rows: ``docs`` (the call's ``codegen.varlen.Documents``, q laid out [B, …, N, Dk])
    and/or ``doc_ids`` [..., N] (a ``document(ids)`` mask) reset the state at every document
    start (``varlen.py``)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if _sp_active() is not None:       # the sequence split over ranks: state passing (codegen/distributed)
        from codegen.distributed import hooks
        return hooks.linear(q, k, v, feature=feature, projection=projection, norm=norm, causal=causal, decay=decay,
                            log_decay=log_decay, scale=scale, algorithm=algorithm, chunk=chunk,
                            initial_state=initial_state, return_state=return_state, docs=docs, doc_ids=doc_ids)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)} for linear attention, got {norm!r}")
    if decay is not None and not causal:
        raise ValueError("a decay needs causal=True (L_ij = Π a_t is only defined for j ≤ i)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k widths differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2] or (causal and q.shape[-2] != k.shape[-2]):
        raise ValueError(f"sequence lengths differ: q {q.shape[-2]}, k {k.shape[-2]}, v {v.shape[-2]}")
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}")
    out_dtype = v.dtype
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    normalized = norm == "sum"
    fq = feature_map(q.to(dtype), feature, projection, is_query=True, normalized=normalized)
    fk = feature_map(k.to(dtype), feature, projection, is_query=False, normalized=normalized)
    v = v.to(dtype)
    if normalized:
        v = torch.cat([v, v.new_ones(()).expand(*v.shape[:-1], 1)], dim=-1)
    f, n = feature_width(feature, q.shape[-1], projection), q.shape[-2]
    kind, lg = _log_decay(decay, log_decay, q.dim(), n, f, dtype, q.device)
    lead = [fq.shape[:-2], fk.shape[:-2], v.shape[:-2]]
    if isinstance(lg, OuterGate):
        lead.append(lg.lead)
        if algorithm != "chunked":
            lg = lg.materialize()
    elif lg is not None:
        lead.append(lg.shape if kind == "head" else lg.shape[: (-1 if kind == "token" else -2)])
    if initial_state is not None:
        if initial_state.shape[-2:] != (f, v.shape[-1]):
            extra = " (norm='sum' keeps the normaliser as a last column)" if normalized else ""
            raise ValueError(f"initial_state must be [..., {f}, {v.shape[-1]}]{extra}, "
                             f"got {tuple(initial_state.shape)}")
        lead.append(initial_state.shape[:-2])
    batch = torch.broadcast_shapes(*lead)
    if kind == "head":
        lg = lg.reshape((1,) * (len(batch) - lg.dim()) + tuple(lg.shape))
    state_shape = (*batch, f, v.shape[-1])
    if initial_state is None:
        state = fq.new_zeros(state_shape)
    else:
        state = initial_state.to(dtype).expand(state_shape)

    ids = None
    if docs is not None or doc_ids is not None:
        from codegen.varlen import mixer_ids
        ids = mixer_ids(docs, q, "linear attention", doc_ids)
        batch = torch.broadcast_shapes(batch, ids.shape[:-1])
        state = state.expand(*batch, *state.shape[-2:])
    if ids is not None and n > 0:
        from codegen.linear.varlen import varlen_linear
        o, state = varlen_linear(fq, fk, v, lg, kind, ids, state, algorithm, chunk, causal)
    elif causal and n == 0:
        o = fq.new_zeros(*batch, 0, v.shape[-1])
    elif not causal:
        o, state = _global(fq, fk, v, state, algorithm)
    elif algorithm == "quadratic":
        o, state = _quadratic(fq, fk, v, lg, kind, state)
    elif algorithm == "recurrent":
        o, state = _recurrent(fq, fk, v, lg, kind, state)
    else:
        o, state = chunked(fq, fk, v, lg, kind, state, chunk)
    o = _contiguous_grad(o)
    if normalized:
        o = o[..., :-1] / o[..., -1:]              # scale cancels
    elif scale != 1.0:
        o = o * scale                              # o = scale · φ(q) S (the state is unscaled)
    o = o.to(out_dtype)
    return (o, state) if return_state else o


def _log_decay(decay, log_decay: bool, rank: int, n: int, f: int, dtype, device):
    """(kind, log a) with kind None | head [*lead] | token [..., N] | channel [..., N, F]."""
    if decay is None:
        return None, None
    if isinstance(decay, OuterGate):
        if not log_decay or decay.channel.shape[-1] not in (1, f) or decay.rate.shape[-1] != n:
            raise ValueError("an OuterGate is a log-gate rate [..., N] ⊗ channel [..., F]")
        return "channel", decay
    if not isinstance(decay, torch.Tensor):
        if not log_decay and decay <= 0:
            raise ValueError(f"a decay rate must be in (0, 1], got {decay}")
        return "head", torch.tensor(float(decay) if log_decay else math.log(decay), dtype=dtype, device=device)
    lg = decay.to(dtype)
    if not log_decay:
        lg = torch.log(lg)
    if lg.dim() <= rank - 2:
        return "head", lg
    if lg.dim() == rank - 1:
        if lg.shape[-1] != n:
            raise ValueError(f"a per-token decay must be [..., N={n}], got {tuple(decay.shape)}")
        return "token", lg
    if lg.dim() == rank:
        if lg.shape[-2] != n or lg.shape[-1] not in (1, f):
            raise ValueError(f"a per-channel decay must be [..., N={n}, F={f}], got {tuple(decay.shape)}")
        if lg.shape[-1] == 1:
            return "token", lg[..., 0]
        return "channel", lg
    raise ValueError(f"decay of rank {lg.dim()} does not fit queries of rank {rank}")


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: ``o.sum().backward()``
    sends an expanded (zero-stride) gradient, on which MKL's batched products are ~50× slower."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


def _contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    return _ContiguousGrad.apply(x) if x.requires_grad else x


def _gate_factor(lg, kind, t):
    """a_t shaped to broadcast against a state [*, F, V] (None: no decay)."""
    if kind is None:
        return None
    if kind == "head":
        return torch.exp(lg)[..., None, None]
    if kind == "token":
        return torch.exp(lg[..., t])[..., None, None]
    return torch.exp(lg[..., t, :])[..., None]


# ---- non-causal ------------------------------------------------------------------------


def _global(fq, fk, v, state, algorithm):
    """o = φ(Q)(S_0 + φ(K)ᵀV): one global state (no mask, no decay)."""
    if algorithm == "quadratic":
        o = (fq @ fk.transpose(-1, -2)) @ v + fq @ state                               # N² scores
        return o, state + fk.transpose(-1, -2) @ v
    state = state + fk.transpose(-1, -2) @ v                                            # read N(F+V), write F·V
    return fq @ state, state


# ---- quadratic: the N×N matrix ----------------------------------------------------------


def segsum(x: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T]: Σ_{t=j+1..i} x_t for j ≤ i, −inf above the diagonal. Each entry
    is summed from its own terms (no difference of two long prefix sums): exact to rounding."""
    t = x.shape[-1]
    rep = x[..., :, None].expand(*x.shape, t)                                           # [..., i, j] = x_i
    strict = torch.ones(t, t, dtype=torch.bool, device=x.device).tril_(-1)
    summed = torch.cumsum(rep.masked_fill(~strict, 0), dim=-2)
    return summed.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril_(), float("-inf"))


def _reverse_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.flip(torch.cumsum(torch.flip(x, (dim,)), dim=dim), (dim,))


def _quadratic(fq, fk, v, lg, kind, state):
    """Materialise M = (φ(Q)φ(K)ᵀ) ∘ L (per-channel gates: the [N, N, F] tensor of decays)."""
    n = fq.shape[-2]
    if kind is None:
        scores = (fq @ fk.transpose(-1, -2)).tril_()
        q_in, k_out, total = fq, fk, None
    elif kind in ("head", "token"):
        x = lg[..., None].expand(*lg.shape, n) if kind == "head" else lg               # [..., N]
        scores = (fq @ fk.transpose(-1, -2)) * torch.exp(segsum(x))
        prefix = torch.cumsum(x, dim=-1)                                                 # Σ_{t≤i}
        suffix = F.pad(_reverse_cumsum(x, -1)[..., 1:], (0, 1))                         # Σ_{t>j}
        q_in, k_out = fq * torch.exp(prefix)[..., None], fk * torch.exp(suffix)[..., None]
        total = torch.exp(prefix[..., -1])[..., None, None]
    else:
        seg = segsum(lg.transpose(-1, -2))                                               # [..., F, N, N]
        scores = torch.einsum("...if,...jf,...fij->...ij", fq, fk, torch.exp(seg))
        prefix = torch.cumsum(lg, dim=-2)
        suffix = F.pad(_reverse_cumsum(lg, -2)[..., 1:, :], (0, 0, 0, 1))
        q_in, k_out = fq * torch.exp(prefix), fk * torch.exp(suffix)
        total = torch.exp(prefix[..., -1, :])[..., None]
    o = scores @ v + q_in @ state
    carried = state if total is None else total * state
    return o, carried + k_out.transpose(-1, -2) @ v


# ---- recurrent: one step per position ---------------------------------------------------


def step_kernel_wanted(fq: torch.Tensor) -> bool:
    """One position on a CUDA device, fp32, no gradient (a decoding step): the fused Triton
    step (step_kernel.py) instead of the loop below; anywhere else the loop."""
    return fq.shape[-2] == 1 and fq.is_cuda and fq.dtype == torch.float32 and not torch.is_grad_enabled()


def _recurrent(fq, fk, v, lg, kind, state):
    """S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t, o_t = φ(q_t) S_t, a loop over t (decoding, reference)."""
    if step_kernel_wanted(fq):                               # a decoding step on a GPU: one kernel
        from codegen.linear.step_kernel import fused_step
        a = _gate_factor(lg, kind, 0)
        o, state = fused_step(fq[..., 0, :], fk[..., 0, :], v[..., 0, :], None if a is None else a[..., 0], state)
        return o[..., None, :], state
    outs = []
    for t in range(fq.shape[-2]):
        kv = fk[..., t, :, None] * v[..., t, None, :]                                   # [*, F, V]
        a = _gate_factor(lg, kind, t)
        state = kv + state if a is None else torch.addcmul(kv, a, state)
        outs.append((fq[..., t, :, None] * state).sum(-2))
    return torch.stack(outs, dim=-2), state


# ---- Mamba's selective scan in this form ------------------------------------------------


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_softplus: bool = False, *, algorithm: str = "chunked",
                   chunk: int = 32, initial_state: torch.Tensor | None = None,
                   return_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan (layout of mamba_ssm's ``selective_scan_ref``): u, delta [B, Dm, N];
    A [Dm, S]; B, C [B, S, N]; D [Dm] -> y [B, Dm, N]. One head per channel: queries C, keys B
    (shared by all heads), values Δ·u and the per-channel log-gate Δ ⊗ A:

        h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t,   y_t = C_t · h_t + D u_t.

    ``initial_state`` / the returned state: h [B, Dm, S]. ``chunk`` 32: the scan form's cost
    hardly depends on it, and half of 64's chunk keeps a block's gates (C positions of every
    chunk) nearer the cache (a loaded 2-core CPU, Dm 64-1024, N 1K-16K: 1-36% less CPU time)."""
    # time-major memory ([B, N, Dm]) viewed as [B, Dm, N]: the scan form reads one position of
    # every chunk at a time, i.e. whole rows of Dm
    dt = (F.softplus(delta) if delta_softplus else delta).transpose(-1, -2).contiguous().transpose(-1, -2)
    q = C.transpose(-1, -2).unsqueeze(-3)                                               # [B, 1, N, S]
    k = B.transpose(-1, -2).unsqueeze(-3)
    v = (dt * u).unsqueeze(-1)                                                           # [B, Dm, N, 1]
    gate = OuterGate(dt, A)                                                              # log-gate Δ ⊗ A [B, Dm, N, S]
    h0 = None if initial_state is None else initial_state.unsqueeze(-1)
    y, h = linear_attention(q, k, v, decay=gate, log_decay=True, algorithm=algorithm, chunk=chunk,
                            initial_state=h0, return_state=True)
    y = y.squeeze(-1)
    if D is not None:
        if y.requires_grad:
            y = torch.addcmul(y, u, D.unsqueeze(-1))
        else:                                          # the scan's own fresh output: no second buffer
            y.addcmul_(u, D.unsqueeze(-1))
    return (y, h.squeeze(-1)) if return_state else y
