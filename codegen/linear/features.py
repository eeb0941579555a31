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
    spectral_pm[+s]  the same map over frequencies in ± pairs, Ω = [Ω₊; Ω₋] with 2m rows, and
               scaled by √2/√(2m) = 1/√m (width 4m [+1]): GMM-RKS of On Learning the Transformer
               Kernel (SmoothedGaussianMixtureFourierFeatures: [cos u₊, sin u₊, cos u₋, sin u₋]·√(4/n),
               n = 4m), with Ω from ``gaussian_frequencies``

A projection may carry leading dims (one per head: [H, m, Dk]); it broadcasts against the
inputs' [.., H, N, Dk].

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

FEATURES = ("identity", "elu1", "relu", "exp", "favor", "spectral", "spectral_pm")


def spectral_smoothing(kind: str) -> float | None:
    """s of a ``spectral+s`` / ``spectral_pm+s`` kind, else None."""
    return float(kind.split("+", 1)[1]) if kind.startswith("spectral") and "+" in kind else None


def feature_width(kind: str, dk: int, projection: torch.Tensor | None) -> int:
    """The width of φ(x) for inputs of width ``dk``."""
    if spectral_smoothing(kind) is not None:
        return feature_width(kind.split("+", 1)[0], dk, projection) + 1
    if kind in ("favor", "spectral", "spectral_pm"):
        if projection is None:
            raise ValueError(f"feature {kind!r} needs a projection [m, Dk]")
        return projection.shape[-2] * (1 if kind == "favor" else 2)
    return dk


def gaussian_frequencies(mean: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor, *, redraw: str = "never",
                         training: bool = False) -> torch.Tensor:
    """GMM-RKS frequencies (On Learning the Transformer Kernel; fast_transformers
    GaussianMixtureFourierFeatures): ω₊ = Σᵀε + μ and ω₋ = Σᵀε − μ for each of the m noise
    columns ε ~ N(0, I) ([Dk, m], shared by the heads), per head when ``mean`` is [H, Dk] and
    ``scale`` [H, Dk, Dk]; both times Dk^(−1/4), the reference's input scale √(1/√Dk).
    Returns Ω = [ω₊; ω₋]: [.., 2m, Dk].

    ``redraw``: ``never`` uses the noise drawn at initialisation; ``training`` draws a new ε
    (from torch's global generator: ``torch.manual_seed`` fixes it) at every call in training
    mode and keeps the last draw for evaluation (the reference with deterministic_eval = True);
    ``always`` draws at every call, in evaluation too (the reference's default). Under
    sequence parallelism every rank of the group uses its first rank's draw. A draw is
    written back into ``noise`` (a buffer), and the computation uses a copy, so graphs of
    earlier calls keep their own ε."""
    if redraw == "always" or (redraw == "training" and training):
        from codegen.torch import decode
        if decode.running():                            # prefill and steps would see different ε
            raise RuntimeError(f"a spectral feature map with redraw = {redraw} draws new frequencies at every "
                               "call, so decoding steps would not continue the prefill: decode in eval() with "
                               "redraw = training (or never)")
        with torch.no_grad():                           # drawn in fp32: the same ε for any dtype
            noise.copy_(torch.randn(noise.shape, device=noise.device))
            _share_draw(noise)
    eps = noise.detach().clone().to(scale.dtype)
    dk = eps.shape[0]
    gauss = torch.einsum("sm,...sd->...md", eps, scale)             # (Σᵀ ε)ᵀ, one row per draw
    mu = mean[..., None, :]
    return torch.cat([gauss + mu, gauss - mu], dim=-2) * dk ** -0.25


def _share_draw(noise: torch.Tensor) -> None:
    """Under sequence parallelism every rank of the group holds part of one sequence, which
    one feature map must see: the ranks' generators differ (``seqdsl train`` seeds each rank's
    stream apart, for dropout), so the group takes the draw of its first rank."""
    from codegen.distributed.context import group

    sp = group()             # also inside a distributed algorithm's local calls (suspended)
    if sp is not None:
        from codegen.distributed.comm import broadcast

        broadcast(noise, sp)


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
        phi = feature_map(x, kind.split("+", 1)[0], projection)
        return torch.cat([phi, torch.full_like(phi[..., :1], smoothing)], dim=-1)
    if kind not in ("favor", "spectral", "spectral_pm"):
        raise ValueError(f"unknown feature map {kind!r}; expected one of {', '.join(FEATURES)}")
    if projection is None:
        raise ValueError(f"feature {kind!r} needs a projection [m, Dk]")
    if projection.shape[-1] != x.shape[-1]:
        raise ValueError(f"projection is {tuple(projection.shape)} but the inputs have width {x.shape[-1]}")
    m = projection.shape[-2]
    proj = x @ projection.to(x.dtype).transpose(-1, -2)               # read N·Dk, write N·m
    if kind.startswith("spectral"):
        gain = math.sqrt(2 / m) if kind == "spectral_pm" else 1 / math.sqrt(m)   # ± pairs: 1/√(m/2)
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1) * gain
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
