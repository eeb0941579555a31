"""Feature maps φ of kernel (linear) attention, applied to queries and keys.

    identity   φ(x) = x
    elu1       φ(x) = elu(x) + 1                                  (Katharopoulos et al. 2020)
    relu       φ(x) = max(x, 0)
    exp        φ(x) = exp(x)
    favor      φ(x) = exp(x ωᵀ − |x|²/2) / √m,  ω = projection [m, Dk]   (Performer, FAVOR+)
    spectral   φ(x) = [cos(x Ωᵀ), sin(x Ωᵀ)] / √m,  Ω = projection [m, Dk]   (width 2m)
    spectral+s the same with the constant feature s appended (width 2m + 1): φ(q)·φ(k) gains
               s², which keeps φ(q)·Σφ(k) positive (fast_transformers' smoothed random
               Fourier features, smoothing 1.0, as On Learning the Transformer Kernel uses)

Stabilising FAVOR+. The exponent x·ω_r − |x|²/2 equals |ω_r|²/2 − |x − ω_r|²/2, so it never
exceeds c = max_r |ω_r|²/2, a constant of the projection. Performer subtracts maxima taken
from the data (a per-row maximum for queries and a maximum over the whole sequence for keys);
the second depends on future keys, which breaks causal state passing (a state carried from
one segment into the next would be in different units). Here, and only with ``norm="sum"``,
where such factors cancel exactly between numerator and denominator:

  - each query row subtracts its own maximum exponent (a factor per output row: cancels);
  - every key subtracts c (one constant for all positions: cancels, never overflows, and
    is the same for every segment, so carried states stay consistent).

The recurrent state is then kept in units of e^{−c}; ``reference.py`` defines it the same
way. With ``norm="none"`` nothing cancels, so φ is the literal formula (it can overflow in
fp32 when |ω_r|² approaches 2·88).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FEATURES = ("identity", "elu1", "relu", "exp", "favor", "spectral")


def spectral_smoothing(kind: str) -> float | None:
    """s of a ``spectral+s`` kind, else None."""
    return float(kind.split("+", 1)[1]) if kind.startswith("spectral+") else None


def feature_width(kind: str, dk: int, projection: torch.Tensor | None) -> int:
    """The width of φ(x) for inputs of width ``dk``."""
    if spectral_smoothing(kind) is not None:
        return feature_width("spectral", dk, projection) + 1
    if kind in ("favor", "spectral"):
        if projection is None:
            raise ValueError(f"feature {kind!r} needs a projection [m, Dk]")
        return projection.shape[0] * (2 if kind == "spectral" else 1)
    return dk


def feature_map(x: torch.Tensor, kind: str, projection: torch.Tensor | None = None, *,
                is_query: bool = False, normalized: bool = False) -> torch.Tensor:
    """φ(x) over the last dim. ``normalized`` (norm="sum") allows FAVOR+'s cancelling shifts."""
    if kind == "identity":
        return x
    if kind == "elu1":
        return F.elu(x) + 1
    if kind == "relu":
        return F.relu(x)
    if kind == "exp":
        return torch.exp(x)
    smoothing = spectral_smoothing(kind)
    if smoothing is not None:
        phi = feature_map(x, "spectral", projection)
        return torch.cat([phi, torch.full_like(phi[..., :1], smoothing)], dim=-1)
    if kind not in ("favor", "spectral"):
        raise ValueError(f"unknown feature map {kind!r}; expected one of {', '.join(FEATURES)}")
    if projection is None:
        raise ValueError(f"feature {kind!r} needs a projection [m, Dk]")
    if projection.shape[-1] != x.shape[-1]:
        raise ValueError(f"projection is {tuple(projection.shape)} but the inputs have width {x.shape[-1]}")
    m = projection.shape[0]
    proj = x @ projection.to(x.dtype).transpose(-1, -2)               # read N·Dk, write N·m
    if kind == "spectral":
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1) * (1.0 / math.sqrt(m))
    expo = proj - 0.5 * (x * x).sum(-1, keepdim=True)
    if normalized:
        if is_query:
            expo = expo - expo.detach().amax(-1, keepdim=True)
        else:
            expo = expo - favor_key_shift(projection).to(x.dtype)
    return torch.exp(expo) * (1.0 / math.sqrt(m))


def favor_key_shift(projection: torch.Tensor) -> torch.Tensor:
    """c = max_r |ω_r|²/2: an upper bound of every key's exponent. It cancels between new keys,
    but not against a given initial state, so it keeps its gradient (the queries' shift cancels
    row by row whatever the state, and is detached)."""
    return 0.5 * (projection ** 2).sum(-1).amax()
