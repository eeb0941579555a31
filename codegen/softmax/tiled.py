"""Tiled online-softmax attention (FlashAttention-style) in eager PyTorch, for any mask.

Per (batch, head): queries in blocks of ``bq``, keys in tiles of ``bk``; the steps of a
:class:`~codegen.softmax.plan.Plan` each compute, for many query blocks at once, a partial
output and its row statistics over some of their tiles. Partial results merge by their
statistics (online softmax), so the forward keeps O(N · chunk · bk) memory beyond the
output and two statistics per row, which is all the backward keeps. The backward replays
the steps: with the *final* output and row statistics, every step's contribution to dq,
dk, dv (and to the bias table) is independent, as in FlashAttention-2.

Row statistics: the row maximum m of the scores and lz = log Σ exp(s − m) ∈ [0, log N],
kept apart (their sum is the log-sum-exp) in float32 (float64 for float64 inputs); the
backward recomputes P = exp((S − m) − lz) in that precision. With one float32 log-sum-exp
the rounding of m + lz (up to |m| · 2⁻²⁴) would scale every P of the row: a relative
error of ~5e-4 at |score| ≈ 1e4, of order one above 2²⁴ ≈ 1.7e7. S − m is exact near the
maximum when the backward recomputes S with the same kernel as the forward, so the plain
kernel runs both ways. PyTorch's fused kernel recomputes S with other rounding than its
forward and takes one float32 log-sum-exp (its P overflowed: NaN gradients at |score| ≈
5.5e10); when a row maximum exceeds ``FLASH_SCORE_LIMIT`` (for float32, scaled by the precision)
and a gradient will be taken, the forward is redone with the plain kernel, and the
backward uses it too (logged once).

Chunk kernels: PyTorch's fused CPU flash-attention op (``_scaled_dot_product_flash_
attention_for_cpu``, which returns the log-sum-exp) when it applies — CPU, no soft cap, no
gradient for a bias table — else a plain matmul kernel (any device, caps, bias gradients).
Query rows with no kept key return 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from codegen.softmax.plan import Plan, Step, positions, step_keep
from codegen.softmax.scores import positional_bias

_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
FLASH_SCORE_LIMIT = 1024.0        # |row max| above which the fused kernel's gradients lose 1e-4 (float32)
log = logging.getLogger("seqdsl.codegen.softmax")
_said: set[str] = set()


def flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether PyTorch's fused CPU flash-attention op can run the chunks."""
    return _FLASH is not None and _FLASH_BWD is not None and device.type == "cpu" and dtype in _FLASH_DTYPES


# ---- chunk kernels -----------------------------------------------------------------


def _flash_layout(t: Tensor, lead: tuple[int, int]) -> Tensor:
    """5-D [B, H, R, L, X] → the 4-D layout whose dim 1 matches a mask of lead (Lb, Lh)."""
    B, H = t.shape[:2]
    if lead[0] == 1 and lead[1] == H and H > 1:
        return t.reshape(B, H * t.shape[2], *t.shape[3:])
    return t.reshape(B * H, *t.shape[2:])


def _flash_mask(mask: Tensor, B: int, H: int) -> Tensor:
    lb, lh = mask.shape[:2]
    if lb == 1 and lh == H and H > 1:
        return mask.reshape(1, H * mask.shape[2], *mask.shape[3:])
    if lb == 1 and lh == 1:
        return mask.reshape(1, *mask.shape[2:])
    return mask.expand(B, H, *mask.shape[2:]).reshape(B * H, *mask.shape[2:])


def _additive(keep: Tensor | None, bias: Tensor | None, dtype) -> Tensor | None:
    """The float mask of the fused kernel: the bias (or 0) where kept, −inf elsewhere."""
    if keep is None:
        return None if bias is None else bias.to(dtype)
    base = torch.zeros((), dtype=dtype, device=keep.device) if bias is None else bias.to(dtype)
    return torch.where(keep, base, float("-inf"))


def flash_forward(q, k, v, additive, scale, causal=False):
    B, H = q.shape[:2]
    lead = (1, 1) if additive is None else additive.shape[:2]
    out, lse = _FLASH(_flash_layout(q, lead), _flash_layout(k, lead), _flash_layout(v, lead), 0.0, causal,
                      attn_mask=None if additive is None else _flash_mask(additive, B, H), scale=scale)
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])


def flash_backward(do, q, k, v, o, lse, additive, scale, causal=False):
    B, H = q.shape[:2]
    lead = (1, 1) if additive is None else additive.shape[:2]
    f = _flash_layout
    dq, dk, dv = _FLASH_BWD(f(do, lead), f(q, lead), f(k, lead), f(v, lead), f(o, lead),
                            f(lse[..., None], lead)[..., 0], 0.0, causal,
                            attn_mask=None if additive is None else _flash_mask(additive, B, H), scale=scale)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def _scores(q, k, scale, bias, cap):
    s = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    if bias is not None:
        s = s + bias
    t = None
    if cap is not None:
        t = torch.tanh(s / cap)
        s = cap * t
    return s, t


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of the row statistics and of P: float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def plain_forward(q, k, v, keep, bias, scale, cap):
    """Output of a chunk and its row statistics: the maximum m (−inf on rows with no kept
    key) and lz = log Σ exp(s − m) (0 there). The score tensor is updated in place."""
    s, _ = _scores(q, k, scale, bias, cap)                 # a fresh tensor: write G·L·S
    s = s.to(_stat_dtype(s.dtype))                         # a no-op for float32 and float64
    if keep is not None:
        s.masked_fill_(~keep, float("-inf"))
    m = s.amax(-1)
    e = s.sub_(torch.where(torch.isinf(m), 0, m)[..., None]).exp_()     # in [0, 1], 1 at the maximum
    z = e.sum(-1)
    dead = z == 0
    o = torch.matmul(e.to(v.dtype), v).div_(torch.where(dead, 1, z)[..., None].to(v.dtype))
    return o, m, torch.where(dead, 0, torch.log(z))


def plain_backward(do, q, k, v, o, m, lz, keep, bias, scale, cap):
    """dq, dk, dv and d scores of a chunk; m = +inf on rows with no kept key (P = 0)."""
    s, t = _scores(q, k, scale, bias, cap)
    s = s.to(m.dtype)
    if keep is not None:
        s.masked_fill_(~keep, float("-inf"))
    p = s.sub_(m[..., None]).sub_(lz[..., None]).exp_()     # S − m exact near the maximum, then the sum
    dv = torch.matmul(p.to(do.dtype).transpose(-1, -2), do)
    dp = torch.matmul(do, v.transpose(-1, -2)).to(p.dtype)
    ds = dp.sub_((do * o).sum(-1, keepdim=True).to(p.dtype)).mul_(p)
    if cap is not None:
        ds.mul_((1 - t * t).to(ds.dtype))
    ds = ds.to(q.dtype)
    dq = torch.matmul(ds, k).mul_(scale)
    dk = torch.matmul(ds.transpose(-1, -2), q).mul_(scale)
    return dq, dk, dv, ds


# ---- the autograd function ---------------------------------------------------------


@dataclass(eq=False)
class Config:
    plan: Plan
    scale: float
    cap: float | None
    bias_kind: str | None
    flash: bool                   # the fused CPU kernel may run (device, dtype)


def _tiles(x: Tensor, n: int, b: int, front: int = 0, back: int = 0) -> Tensor:
    """[B, H, n, D] → contiguous tiles [B, H, front + ceil(n/b) + back, b, D], zero padded."""
    nb = -(-n // b)
    after = (nb + back) * b - n
    if front or after:
        x = torch.nn.functional.pad(x, (0, 0, front * b, after))
    return x.contiguous().reshape(*x.shape[:2], front + nb + back, b, x.shape[-1])


def _rows(s: Step, t: Tensor) -> Tensor:
    """The step's query rows of a tile tensor [B, H, nqb, bq, *X] as [B, H, G, g·bq, *X]:
    a strided view when the groups advance by a constant stride, else a gathered copy."""
    B, H, _, bq = t.shape[:4]
    X = t.shape[4:]
    G, g = s.rows.shape
    if s.q_view is not None:
        r0, dr = s.q_view
        inner = math.prod(X)
        return t.as_strided((B, H, G, g * bq, *X), (t.stride(0), t.stride(1), dr * bq * inner, *t.stride()[3:]),
                            t.storage_offset() + r0 * bq * inner)
    return t.index_select(2, s.rows.reshape(-1)).reshape(B, H, G, g * bq, *X)


def _keys(s: Step, t: Tensor) -> Tensor:
    """The step's key (or value) tiles [B, H, nkb, bk, D] as [B, H, G, c·bk, D]."""
    B, H, _, bk, D = t.shape
    G, c = s.kidx.shape
    if s.k_view is not None:
        t0, dt = s.k_view
        return t.as_strided((B, H, G, c * bk, D), (t.stride(0), t.stride(1), dt * bk * D, D, 1),
                            t.storage_offset() + t0 * bk * D)
    return t.index_select(2, s.kidx.reshape(-1)).reshape(B, H, G, c * bk, D)


def _bias(cfg: Config, s: Step, table: Tensor | None, dtype) -> Tensor | None:
    if cfg.bias_kind is None:
        return None
    i, j = positions(cfg.plan, s)
    return positional_bias(cfg.bias_kind, table, i, j, cfg.plan.heads, dtype)[None]   # [1, Hb, R', L, S]


def _use_flash(cfg: Config, table_grad: bool) -> bool:
    return cfg.flash and cfg.cap is None and not table_grad


def _causal(s: Step, bias: Tensor | None, flash: bool) -> bool:
    """The step runs the fused kernel in its causal mode (its predicate is j ≤ i, no bias)."""
    return flash and s.causal and bias is None


def _masks(cfg: Config, s: Step, bias: Tensor | None, flash: bool, dtype):
    """(keep, dead rows, additive mask for the fused kernel) of a step; None where none."""
    if _causal(s, bias, flash):                  # a triangle: no dead rows, no mask tensor
        return None, None, None
    keep, dead = step_keep(cfg.plan, s) if s.masked else (None, None)
    if not flash:
        return keep, dead, None
    if bias is None and keep is not None and s.keep is keep:      # cached with the plan
        if dtype not in s.additive:
            s.additive[dtype] = _additive(keep, None, dtype)
        return keep, dead, s.additive[dtype]
    return keep, dead, _additive(keep, bias, dtype)


def tiled_forward(cfg: Config, q: Tensor, k: Tensor, v: Tensor, table: Tensor | None,
                  for_backward: bool = False, table_grad: bool = False) -> tuple[Tensor, Tensor, Tensor, bool]:
    """The output tiles [B, H, nqb, bq, Dv] (padded rows included), their row statistics m
    (−inf on rows with no kept key) and lz [B, H, nqb, bq], and whether the fused kernel
    computed them (the backward runs the same kernel as the forward). ``for_backward``: a
    gradient will be taken (rows whose maximum is too large for the fused kernel's backward
    then rerun plainly); ``table_grad``: the bias table's (only the plain kernel gives it)."""
    flash = _use_flash(cfg, table_grad)
    out, m, lz = _forward(cfg, q, k, v, table, flash)
    if flash and for_backward and m.numel():
        top = float(torch.where(torch.isinf(m), 0, m).abs().max())
        limit = FLASH_SCORE_LIMIT * torch.finfo(torch.float32).eps / torch.finfo(m.dtype).eps
        if top > limit:
            if "large" not in _said:
                _said.add("large")
                log.info(f"tiled softmax: a row maximum of the scores reaches {top:.3g} > {limit:.3g}; the plain "
                         "chunk kernel reruns the forward and runs the backward (the fused kernel's backward "
                         "loses precision there)")
            flash = False
            out, m, lz = _forward(cfg, q, k, v, table, flash)
    return out, m, lz, flash


def _forward(cfg: Config, q: Tensor, k: Tensor, v: Tensor, table: Tensor | None, flash: bool):
    p = cfg.plan
    q_t = _tiles(q, p.nq, p.bq)
    k_t, v_t = _tiles(k, p.nk, p.bk, p.front, p.back), _tiles(v, p.nk, p.bk, p.front, p.back)
    out = torch.zeros(*q_t.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    stat = _stat_dtype(q.dtype)
    m = torch.full(q_t.shape[:-1], float("-inf"), dtype=stat, device=q.device)
    lz = torch.zeros(q_t.shape[:-1], dtype=stat, device=q.device)
    for s in p.steps:
        qs, ks, vs = _rows(s, q_t), _keys(s, k_t), _keys(s, v_t)   # read G·L·D + 2·G·S·D
        bias = _bias(cfg, s, table, q.dtype)
        keep, dead, additive = _masks(cfg, s, bias, flash, q.dtype)
        if flash:                       # the fused kernel gives the log-sum-exp: m = lse, lz = 0
            o, m_s = flash_forward(qs, ks, vs, additive, cfg.scale, _causal(s, bias, flash))
            m_s, l_s = m_s.to(stat), torch.zeros((), dtype=stat, device=q.device).expand(m_s.shape)
            if dead is not None:                                  # the fused kernel says 0 there
                m_s = m_s.masked_fill(dead, float("-inf"))
        else:
            o, m_s, l_s = plain_forward(qs, ks, vs, keep, bias, cfg.scale, cfg.cap)
        _merge(out, m, lz, s, o, m_s, l_s)                         # read/write G·L·Dv
    return out, m, lz


def _merge(out: Tensor, m: Tensor, lz: Tensor, s: Step, o: Tensor, m_s: Tensor, l_s: Tensor) -> None:
    """Online softmax: fold a partial result (o, m_s, l_s) into the running (out, m, lz) of
    its rows. Weights exp((m_x − m_new) + (l_x − l_new)): differences of nearby numbers
    first, so that large scores lose nothing."""
    view = s.q_view is not None
    if s.first and view:
        _rows(s, out).copy_(o)
        _rows(s, m).copy_(m_s)
        _rows(s, lz).copy_(l_s)
        return
    flat = s.rows.reshape(-1)

    def put(dst: Tensor, x: Tensor) -> None:
        dst.index_copy_(2, flat, x.reshape(*dst.shape[:2], -1, *dst.shape[3:]).to(dst.dtype))

    if s.first:
        put(out, o)
        put(m, m_s)
        put(lz, l_s)
        return
    o_old, m_old, l_old = _rows(s, out), _rows(s, m), _rows(s, lz)      # views, or copies when gathered
    m_new = torch.maximum(m_old, m_s)
    live = m_new > float("-inf")
    mu = torch.where(live, m_new, 0)
    a = torch.exp((m_old - mu) + l_old)                  # Σ exp(s − m_new) over each part: 0 on a dead part
    b = torch.exp((m_s - mu) + l_s)
    z = a + b
    zs = torch.where(live, z, 1)
    o_old.mul_((a / zs).to(out.dtype)[..., None]).addcmul_(o, (b / zs).to(out.dtype)[..., None])
    l_new = torch.where(live, torch.log(zs), 0)
    if view:
        m_old.copy_(m_new)
        l_old.copy_(l_new)
    else:
        put(out, o_old)
        put(m, m_new)
        put(lz, l_new)


def tiled_backward(cfg: Config, d_out: Tensor, q: Tensor, k: Tensor, v: Tensor, table: Tensor | None,
                   out: Tensor, m: Tensor, lz: Tensor, need_table: bool, flash: bool):
    """Gradients of q, k, v (unpadded) and of the bias table, replaying the plan's steps
    with the final output and row statistics (``flash``: the fused kernel made them)."""
    p = cfg.plan
    q_t = _tiles(q, p.nq, p.bq)
    k_t, v_t = _tiles(k, p.nk, p.bk, p.front, p.back), _tiles(v, p.nk, p.bk, p.front, p.back)
    do_t = _tiles(d_out, p.nq, p.bq)
    m = torch.where(torch.isinf(m), float("inf"), m)              # rows with no key: p = exp(−inf) = 0
    dq_t, dk_t, dv_t = torch.zeros_like(q_t), torch.zeros_like(k_t), torch.zeros_like(v_t)
    B, H, nkb = k_t.shape[:3]
    dtable = torch.zeros_like(table) if need_table else None
    flash = flash and not need_table
    lse = m + lz if flash else None                                # the fused kernel's one statistic
    bh = torch.arange(B * H, device=q.device)[:, None] * nkb
    for s in p.steps:
        qs, ks, vs, dos, os_ = _rows(s, q_t), _keys(s, k_t), _keys(s, v_t), _rows(s, do_t), _rows(s, out)
        bias = _bias(cfg, s, table, q.dtype)
        keep, _, additive = _masks(cfg, s, bias, flash, q.dtype)
        if flash:
            dq, dk, dv = flash_backward(dos, qs, ks, vs, os_, _rows(s, lse), additive, cfg.scale,
                                        _causal(s, bias, flash))
        else:
            dq, dk, dv, ds = plain_backward(dos, qs, ks, vs, os_, _rows(s, m), _rows(s, lz), keep, bias, cfg.scale,
                                            cfg.cap)
            if need_table:                      # d bias = d scores: through the bias's own formula
                with torch.enable_grad():
                    t = table.detach().requires_grad_()
                    i, j = positions(p, s)
                    b = positional_bias(cfg.bias_kind, t, i, j, p.heads, q.dtype)
                    dtable += torch.autograd.grad(b, t, ds.sum_to_size(1, *b.shape)[0])[0]
        if s.q_view is not None:                # the groups' rows never overlap
            _rows(s, dq_t).add_(dq)
        else:
            dq_t.index_add_(2, s.rows.reshape(-1), dq.reshape(B, H, -1, p.bq, dq.shape[-1]))
        G, c = s.kidx.shape
        if s.k_view is not None and (G == 1 or s.k_view[1] >= c):   # windows that do not overlap
            _keys(s, dk_t).add_(dk)
            _keys(s, dv_t).add_(dv)
        else:
            flat = (bh + s.kidx.reshape(1, -1)).reshape(-1)
            dk_t.view(-1, p.bk, dk_t.shape[-1]).index_add_(0, flat, dk.reshape(-1, p.bk, dk.shape[-1]))
            dv_t.view(-1, p.bk, dv_t.shape[-1]).index_add_(0, flat, dv.reshape(-1, p.bk, dv.shape[-1]))

    def untile(x: Tensor, n: int, b: int, front: int = 0) -> Tensor:
        return x.reshape(*x.shape[:2], -1, x.shape[-1])[:, :, front * b:front * b + n]

    return untile(dq_t, p.nq, p.bq), untile(dk_t, p.nk, p.bk, p.front), untile(dv_t, p.nk, p.bk, p.front), dtable


class TiledAttention(torch.autograd.Function):
    """q, k, v canonical [B, H, N, D] (equal D when the fused kernel may run); the bias
    table is an input so that its gradient flows. Saves q, k, v, the output and two
    statistics per row: O(N) beyond the inputs."""

    @classmethod
    def apply(cls, q, k, v, table, cfg: Config):
        # whether a gradient will be taken is known here, not in forward (it runs without grad mode)
        grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, table))
        return super().apply(q, k, v, table, cfg, grad)

    @staticmethod
    def forward(ctx, q, k, v, table, cfg: Config, grad: bool):
        out, m, lz, flash = tiled_forward(cfg, q, k, v, table, for_backward=grad,
                                          table_grad=grad and table is not None and ctx.needs_input_grad[3])
        ctx.cfg, ctx.flash = cfg, flash
        ctx.save_for_backward(q, k, v, table, out, m, lz)
        return out.reshape(*out.shape[:2], -1, out.shape[-1])[:, :, :cfg.plan.nq]

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, table, out, m, lz = ctx.saved_tensors
        need_table = table is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dt = tiled_backward(ctx.cfg, d_out.contiguous(), q, k, v, table, out, m, lz, need_table,
                                        ctx.flash)
        return dq, dk, dv, dt, None, None
