"""Plain references for the linear and decayed/gated families: the literal recurrences, one
position at a time, written to be obviously right (run them in float64 to check the fast
paths). Nothing here is shared with ``torch_impl.py``/``chunked.py``, feature maps included.

    linear_attention_ref   S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀv_t,  z_t = a_t ⊙ z_{t−1} + φ(k_t),
                           o_t = scale·φ(q_t)S_t  (norm="sum": divided by scale·φ(q_t)·z_t)
    selective_scan_ref     Mamba (Gu & Dao 2023): h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t,
                           y_t = C_t · h_t + D u_t
    retention_ref          RetNet (Sun et al. 2023): o_n = Σ_{m≤n} γ_h^{n−m} (q_n·k_m) Dh^-½ v_m,
                           γ_h = 1 − 2^(−5−h)
    gla_ref                GLA (Yang et al. 2024): S_t = diag(exp g_t) S_{t−1} + k_tᵀv_t,
                           o_t = Dk^-½ q_t S_t
"""

from __future__ import annotations

import math

import torch


def phi(x: torch.Tensor, kind: str, projection: torch.Tensor | None = None, *, key_shift: bool = False) -> torch.Tensor:
    """The feature maps, from their formulas. ``key_shift``: FAVOR+ keys under norm="sum" are
    taken as φ(k)·e^{−c}, c = max_r |ω_r|²/2, a constant that the normaliser cancels (the
    state convention of ``features.py``)."""
    if kind == "identity":
        return x
    if kind == "elu1":
        return torch.where(x > 0, x + 1, torch.exp(x))          # elu(x) + 1
    if kind == "relu":
        return torch.clamp(x, min=0)
    if kind == "exp":
        return torch.exp(x)
    m = projection.shape[-2]
    wx = x @ projection.to(x.dtype).transpose(-1, -2)                 # [.., N, m]
    if "+" in kind:                                                   # constant feature s appended
        base = phi(x, kind.split("+", 1)[0], projection)
        return torch.cat([base, torch.full_like(base[..., :1], float(kind.split("+", 1)[1]))], dim=-1)
    if kind == "spectral":
        return torch.cat([torch.cos(wx), torch.sin(wx)], dim=-1) / math.sqrt(m)
    if kind == "spectral_pm":                                         # m/2 pairs ω±: 1/√(m/2)
        return torch.cat([torch.cos(wx), torch.sin(wx)], dim=-1) / math.sqrt(m / 2)
    assert kind == "favor", kind
    c = 0.5 * (projection.to(x.dtype) ** 2).sum(-1).max() if key_shift else 0.0
    return torch.exp(wx - 0.5 * (x ** 2).sum(-1, keepdim=True) - c) / math.sqrt(m)


def rates(decay, log_decay: bool, rank: int, t: int) -> torch.Tensor | float | None:
    """a_t from ``decay`` (granularity by rank, as ``torch_impl.linear_attention`` documents):
    rank ≤ R−2 per head, R−1 per token [..., N], R per key feature [..., N, F]."""
    if decay is None:
        return None
    if not isinstance(decay, torch.Tensor):
        return math.exp(decay) if log_decay else decay
    a = torch.exp(decay) if log_decay else decay
    if a.dim() <= rank - 2:
        return a[..., None, None]                                      # broadcast over [F, V]
    if a.dim() == rank - 1:
        return a[..., t, None, None]
    return a[..., t, :, None]


def linear_attention_ref(q, k, v, *, feature="identity", projection=None, norm="none", causal=True, decay=None,
                         log_decay=False, scale=1.0, initial_state=None, return_state=False):
    """One position at a time. States [..., F, V] (norm="sum": [..., F, V+1], z last)."""
    fq = phi(q, feature, projection)
    fk = phi(k, feature, projection, key_shift=norm == "sum")
    n, dv = q.shape[-2], v.shape[-1]
    if initial_state is None:
        S, z = 0.0, 0.0
    elif norm == "sum":
        S, z = initial_state[..., :dv], initial_state[..., dv]
    else:
        S, z = initial_state, 0.0
    if not causal:
        for j in range(k.shape[-2]):
            S = S + fk[..., j, :, None] * v[..., j, None, :]
            z = z + fk[..., j, :]
    outs = []
    for t in range(n):
        if causal:
            a = rates(decay, log_decay, q.dim(), t)
            if a is not None:
                S, z = a * S, a[..., 0] * z if isinstance(a, torch.Tensor) else a * z
            S = S + fk[..., t, :, None] * v[..., t, None, :]               # + φ(k_t)ᵀ v_t
            z = z + fk[..., t, :]
        num = scale * (fq[..., t, :, None] * S).sum(-2)                   # φ(q_t) S_t
        if norm == "sum":
            num = num / (scale * (fq[..., t, :] * z).sum(-1, keepdim=True))
        outs.append(num)
    o = torch.stack(outs, dim=-2)
    if not return_state:
        return o
    return o, (torch.cat([S, z[..., None]], dim=-1) if norm == "sum" else S)


def selective_scan_ref(u, delta, A, B, C, D=None, delta_softplus=False, initial_state=None, return_state=False):
    """Mamba's selective scan from its formula. u, delta [B, Dm, N]; A [Dm, S]; B, C [B, S, N];
    D [Dm]; h [B, Dm, S]."""
    dt = torch.log1p(torch.exp(delta)) if delta_softplus else delta      # softplus
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype) if initial_state is None else initial_state
    ys = []
    for t in range(u.shape[-1]):
        d_t = dt[:, :, t, None]                                           # [B, Dm, 1]
        h = torch.exp(d_t * A) * h + d_t * B[:, None, :, t] * u[:, :, t, None]
        ys.append((C[:, None, :, t] * h).sum(-1))                         # C_t · h_t
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    return (y, h) if return_state else y


def retention_gammas(h: int, dtype=torch.float64) -> torch.Tensor:
    """RetNet's per-head decays γ_h = 1 − 2^(−5−h)."""
    return 1 - 2.0 ** (-5 - torch.arange(h, dtype=dtype))


def retention_ref(q, k, v):
    """q, k, v [B, H, N, Dh]: o_n = Σ_{m≤n} γ_h^{n−m} (q_n·k_m) Dh^-½ v_m, summed per n."""
    h, n, dh = q.shape[1], q.shape[2], q.shape[3]
    gamma = retention_gammas(h, q.dtype)[:, None]                        # [H, 1]
    outs = []
    for i in range(n):
        m = torch.arange(i + 1)
        weight = gamma ** (i - m).to(q.dtype)                               # [H, i+1]
        s = (q[:, :, i, None, :] * k[:, :, : i + 1, :]).sum(-1) * dh ** -0.5  # [B, H, i+1]
        outs.append(((s * weight)[..., None] * v[:, :, : i + 1, :]).sum(-2))
    return torch.stack(outs, dim=2)


def gla_ref(q, k, v, g):
    """q, k, g [B, H, N, Dk] (g = log α ≤ 0), v [B, H, N, Dv]: the GLA recurrence."""
    dk = q.shape[-1]
    S = torch.zeros(*q.shape[:-2], dk, v.shape[-1], dtype=q.dtype)
    outs = []
    for t in range(q.shape[-2]):
        S = torch.exp(g[..., t, :])[..., None] * S + k[..., t, :, None] * v[..., t, None, :]
        outs.append((q[..., t, :, None] * S).sum(-2) * dk ** -0.5)
    return torch.stack(outs, dim=-2)
