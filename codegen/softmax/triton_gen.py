"""Triton generator of the softmax family: block-sparse online-softmax attention
(FlashAttention-2: forward with the row statistics saved, backward recomputing the
scores), specialised to one mixer's mask, positional bias and soft cap.

Row statistics: the row maximum m and log Σ exp(s − m), saved apart (float32) and used
apart in the backward, P = exp((S − m) − log Σ): their float32 sum, the log-sum-exp,
rounds by |m| · 2⁻²⁴, which scales all of P (1e-3 at |score| ≈ 1e4, see tiled.py).

``generate(name, mask, scale=…, bias_kind=…, cap=…)`` returns the text of one section of a
generated model file (the emitter writes the header: math, torch, triton, tl, ``M``):

- ``{name}_keep``: the mask predicate, inlined as a Triton boolean expression over the
  query positions ``qi`` [BLOCK_M, 1] and key positions ``kj`` [1, BLOCK_N];
- ``{name}_scores``: scale · q kᵀ, plus ALiBi / relative bias, then cap · tanh(s / cap);
- the block schedule: for intersections of causal, window, local, strided, global-token
  and key-range masks, closed-form loop bounds computed from the block index in the kernel
  (``triton_support.schedule_program``: partial tiles, then full tiles with no predicate,
  then partial ones); for everything else (random blocks, butterfly, unions) a block map
  built once per sizes on the host (lists of partial and full tiles per block);
- three kernels ``{name}_fwd``, ``{name}_bwd_dkdv``, ``{name}_bwd_dq`` and the callable
  ``{name}(q, k, v, bias_table=None, *, cu_seqlens=None)`` (``triton_support.attention``).

Numbers from the .seq file enter the text only through ``repr(int(…))`` / ``repr(float(…))``.
"""

from __future__ import annotations

import math

from codegen import masks as M
from codegen.softmax import triton_support as sx

BIAS_KINDS = (None, "alibi", "relative")


# ---- what is supported -----------------------------------------------------------------


def unsupported(mask, *, bias_kind: str | None = None, cap: float | None = None) -> str | None:
    """None when the Triton kernels handle this structure, else a one-line reason."""
    mask = M.Full() if mask is None else mask
    bad = _unknown_leaf(mask)
    if bad is not None:
        return bad
    if bias_kind not in BIAS_KINDS:
        return f"the Triton softmax kernels know no positional bias {bias_kind!r} (known: alibi, relative)"
    if cap is not None and not (math.isfinite(float(cap)) and float(cap) > 0):
        return f"soft cap must be a positive finite number, got {cap!r}"
    return None


def _unknown_leaf(mask) -> str | None:
    if isinstance(mask, (M.And, M.Or)):
        return _unknown_leaf(mask.a) or _unknown_leaf(mask.b)
    if isinstance(mask, (M.Buckets, M.BlockMap)):
        return (f"{type(mask).__name__.lower()} masks are content-based (computed from the data): "
                "no static block schedule for a generated kernel")
    if not isinstance(mask, (*sx.INTERVAL_LEAVES, M.RandomBlocks, M.Butterfly)):
        return f"the Triton softmax kernels do not know the mask {type(mask).__name__}"
    if isinstance(mask, M.Butterfly) and mask.size is not None:     # the checker allows it on weights only
        return f"{mask}: a stretched butterfly has no in-kernel predicate"
    return None


# ---- pieces of text ------------------------------------------------------------------------


def mask_constructor_source(mask: M.Mask) -> str:
    """Python source rebuilding ``mask`` with ``codegen.masks`` (imported as ``M``); every
    number is written with repr(int(…))."""
    i = lambda x: repr(int(x))  # noqa: E731
    match mask:
        case M.Full():
            return "M.Full()"
        case M.Causal(offset=o):
            return f"M.Causal({i(o)})"
        case M.Window(size=s, block=b):
            return f"M.Window({i(s)}, block={i(b)})"
        case M.Local(size=s):
            return f"M.Local({i(s)})"
        case M.Strided(stride=s):
            return f"M.Strided({i(s)})"
        case M.Global(count=c):
            return f"M.Global({i(c)})"
        case M.KeyRange(start=a, stop=b):
            return f"M.KeyRange({i(a)}, {'None' if b is None else i(b)})"
        case M.Butterfly(block=b, factors=f, size=None):
            return f"M.Butterfly({i(b)}{'' if f is None else f', factors={i(f)}'})"
        case M.RandomBlocks(count=c, block=b, seed=s, per_head=p, exclude=ex):
            extra = "" if ex is None else f", exclude={mask_constructor_source(ex)}"
            return f"M.RandomBlocks({i(c)}, block={i(b)}, seed={i(s)}, per_head={bool(p)!r}{extra})"
        case M.And(a=a, b=b):
            return f"M.And({mask_constructor_source(a)}, {mask_constructor_source(b)})"
        case M.Or(a=a, b=b):
            return f"M.Or({mask_constructor_source(a)}, {mask_constructor_source(b)})"
    raise ValueError(f"no constructor source for the mask {mask!r} (data-dependent or unknown)")


def predicate(mask: M.Mask, leaves: list[M.RandomBlocks] | None = None) -> str:
    """The mask as a Triton boolean expression over qi [BLOCK_M, 1] and kj [1, BLOCK_N]."""
    leaves = sx.random_leaves(mask) if leaves is None else leaves
    i = lambda x: repr(int(x))  # noqa: E731
    match mask:
        case M.Full():
            return "(qi >= 0) & (kj >= 0)"
        case M.Causal(offset=o):
            return "(kj <= qi)" if o == 0 else f"(kj <= qi + {i(o)})" if o > 0 else f"(kj <= qi - {i(-o)})"
        case M.Window(size=s, block=b):
            d = "qi - kj" if b == 1 else f"qi // {i(b)} - kj // {i(b)}"
            return f"(tl.abs({d}) < {i(s)})"
        case M.Local(size=s):
            return f"(qi // {i(s)} == kj // {i(s)})"
        case M.Strided(stride=s):
            return f"((qi - kj) % {i(s)} == 0)"
        case M.Global(count=c):
            return f"((qi < {i(c)}) | (kj < {i(c)}))"
        case M.KeyRange(start=a, stop=b):
            return f"((kj >= {i(a)}) & (kj < {'seqlen_k' if b is None else i(b)}))"
        case M.Butterfly(block=b, factors=f, size=None):
            x = f"((qi // {i(b)}) ^ (kj // {i(b)}))"
            below = "" if f is None else f" & ({x} < {i(1 << int(f))})"
            return f"((({x} & ({x} - 1)) == 0){below})"
        case M.RandomBlocks(block=b, per_head=ph):
            n = next(k for k, leaf in enumerate(leaves) if leaf is mask)
            head = f"i_h * tl.cdiv(seqlen_q, {i(b)}) * tl.cdiv(seqlen_k, {i(b)}) + " if ph else ""
            return (f"(tl.load(RND{n} + tl.load(RNDOFF{n} + i_seq) + {head}(qi // {i(b)}) * tl.cdiv(seqlen_k, {i(b)})"
                    f" + kj // {i(b)}, mask=(qi < seqlen_q) & (kj < seqlen_k), other=0) != 0)")
        case M.And(a=a, b=b):
            return f"({predicate(a, leaves)} & {predicate(b, leaves)})"
        case M.Or(a=a, b=b):
            return f"({predicate(a, leaves)} | {predicate(b, leaves)})"
    raise ValueError(f"no Triton predicate for the mask {mask!r}")


def _score_lines(scale: float, bias_kind: str | None, cap: float | None) -> tuple[str, str]:
    """(lines adding bias and cap to b_s, a one-line description)."""
    lines, doc = [], f"{float(scale)!r} · q kᵀ"
    if bias_kind == "alibi":
        lines.append("    b_s += tl.load(BIAS + i_h * stride_bias_h) * (kj - qi).to(tl.float32)   # ALiBi: slope_h · (j − i)")
        doc += " + slope_h · (j − i)"
    elif bias_kind == "relative":
        lines += ["    half = n_buckets // 2   # relative: table[h, clamp(j − i, −half, half − 1) + half]",
                  "    b_s += tl.load(BIAS + i_h * stride_bias_h + tl.minimum(tl.maximum(kj - qi, -half), half - 1) + half)"]
        doc += " + table[h, clamp(j − i)]"
    if cap is not None:
        c = float(cap)
        lines.append(f"    b_s = {c!r} * (1.0 - 2.0 / (tl.exp(b_s * {2.0 / c!r}) + 1.0))   # soft cap: cap · tanh(s / cap)")
        doc = f"{c!r} · tanh(({doc}) / {c!r})"
    return "".join(line + "\n" for line in lines), doc


def _dbias_lines(bias_kind: str | None) -> str:
    if bias_kind == "alibi":
        return ("    if USE_DBIAS:   # d slope_h = Σ dS · (j − i)\n"
                "        tl.atomic_add(DBIAS + i_h * stride_bias_h, tl.sum(tl.sum(b_ds * (kj - qi).to(tl.float32), 1), 0))\n")
    if bias_kind == "relative":
        return ("    if USE_DBIAS:   # d table[h, bucket] = Σ dS over the pairs of that bucket\n"
                "        half = n_buckets // 2\n"
                "        b_idx = tl.minimum(tl.maximum(kj - qi, -half), half - 1) + half\n"
                "        tl.atomic_add(DBIAS + i_h * stride_bias_h + b_idx, b_ds, mask=(qi < seqlen_q) & (kj < seqlen_k))\n")
    return ""


def _schedule(mask: M.Mask, call: str, transposed: bool, per_head_map: bool) -> str:
    """The loops of one kernel over the blocks it visits; ``call`` is the tile step with
    ``{MASKED}`` for its APPLY_MASK flag."""
    loop, it = ("i_m", "query") if transposed else ("i_n", "key")
    own = "key" if transposed else "query"
    ind = "        "
    if sx.has_closed_form(mask):
        out = [f"    # ---- the {it} blocks this {own} block visits, in closed form (same lines as"
               f" triton_support.schedule_program{'(transposed)' if transposed else ''})"]
        for var, ex, comment in sx.schedule_program(mask, transposed):
            out.append(f"    {var} = {ex.render()}" + (f"   # {comment}" if comment else ""))
        out += [f"    for {loop} in range(blk_lo, blkf_lo):   # partial tiles: the predicate decides",
                ind + call.format(MASKED="True"),
                f"    for {loop} in range(blkf_lo, blkf_hi):   # full tiles: every pair kept, no predicate",
                ind + call.format(MASKED="False"),
                f"    for {loop} in range(blkf_hi, blk_hi):   # partial tiles",
                ind + call.format(MASKED="True")]
        return "\n".join(out) + "\n"
    own_blk = "i_n" if transposed else "i_m"
    out = [f"    # ---- the {it} blocks this {own} block visits, from the block map built on the host",
           f"    i_l = {'i_h' if per_head_map else '0'}   # the map's head (per-head random blocks)",
           f"    p_map = i_l * map_rows + tl.load(MAP_ROW0 + i_seq) + {own_blk}",
           "    for t in range(0, tl.load(MAP_PCNT + p_map)):   # partial tiles: the predicate decides",
           f"        {loop} = tl.load(MAP_PART + p_map * part_w + t)",
           ind + call.format(MASKED="True"),
           "    for t in range(0, tl.load(MAP_FCNT + p_map)):   # full tiles: every pair kept, no predicate",
           f"        {loop} = tl.load(MAP_FULL + p_map * full_w + t)",
           ind + call.format(MASKED="False")]
    return "\n".join(out) + "\n"


# ---- the section -----------------------------------------------------------------------------

_SEQ = '''    if IS_VARLEN:   # one packed sequence of cu_seqlens: positions count from its start
        i_seq = i_b
        bos = tl.load(CU + i_b)
        seqlen_q = tl.load(CU + i_b + 1) - bos
        seqlen_k = seqlen_q
        i_b = 0
    else:
        i_seq = 0
        bos = 0
        seqlen_q = seqlen_q_all
        seqlen_k = seqlen_k_all
    i_hk = i_h // GROUP   # the k/v head of this query head (grouped-query attention)
    q_row0 = (i_b * H + i_h).to(tl.int64) * seqlen_q_all + bos      # first row of this sequence in q, o and the row statistics
    k_row0 = (i_b * (H // GROUP) + i_hk).to(tl.int64) * seqlen_k_all + bos
'''

_TEMPLATE = '''
# ==== {name}: block-sparse online-softmax attention (FlashAttention-2), generated ====
#   mask      {mask_src}
#   scores    {score_doc}
#   schedule  {schedule_doc}
from codegen.softmax import triton_support as sx
from codegen.triton import tuning as tt

{name}_MASK = {mask_src}


@triton.jit
def {name}_keep(qi, kj, seqlen_q, seqlen_k, i_h, i_seq{rnd_params}):
    """The mask predicate at query positions qi [BLOCK_M, 1] and key positions kj [1, BLOCK_N]."""
    return {keep}


@triton.jit
def {name}_scores(b_q, b_k, qi, kj, i_h, BIAS, stride_bias_h, n_buckets, DOT_PREC: tl.constexpr):
    """One tile of scores: {score_doc}."""
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * {scale}
{score_lines}    return b_s


@triton.jit
def {name}_fwd_tile(acc, m_i, l_i, b_q, qi, K, V, i_n, seqlen_q, seqlen_k, i_h, i_seq, BIAS, stride_bias_h,
                    n_buckets{rnd_params}, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                    D_K: tl.constexpr, D_V: tl.constexpr, APPLY_MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    """Fold key block i_n into the running output acc, row maxima m_i and row sums l_i."""
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_dk = tl.arange(0, BLOCK_DK)
    o_dv = tl.arange(0, BLOCK_DV)
    m_n = o_n < seqlen_k
    b_k = tl.load(K + o_n[:, None] * D_K + o_dk[None, :], mask=m_n[:, None] & (o_dk[None, :] < D_K), other=0.0)
    b_v = tl.load(V + o_n[:, None] * D_V + o_dv[None, :], mask=m_n[:, None] & (o_dv[None, :] < D_V), other=0.0)
    kj = o_n[None, :]
    b_s = {name}_scores(b_q, b_k, qi, kj, i_h, BIAS, stride_bias_h, n_buckets, DOT_PREC)
    if APPLY_MASK:   # a partial tile: the predicate, and the key padding
        m_keep = {name}_keep(qi, kj, seqlen_q, seqlen_k, i_h, i_seq{rnd_args}) & (kj < seqlen_k)
        b_s = tl.where(m_keep, b_s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(b_s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing kept yet: exp(-inf - 0) = 0
    b_p = tl.exp(b_s - m_use[:, None])
    alpha = tl.exp(m_i - m_use)
    l_i = l_i * alpha + tl.sum(b_p, 1)
    acc = acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PREC)
    return acc, m_new, l_i


@tt.autotune(key=["seqlen_q_all", "seqlen_k_all", "D_K", "D_V"])   # warps × stages timed once per size on a GPU
@triton.jit
def {name}_fwd(Q, K, V, O, ROWMAX, ROWLOG, BIAS, CU{map_params}{rnd_params}, stride_bias_h, n_buckets, seqlen_q_all, seqlen_k_all,
               H, GROUP, IS_VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr,
               DOT_PREC: tl.constexpr):
    """O = softmax(mask ∘ scores) V for one query block of one (batch, head); the row
    statistics ROWMAX = max scores, ROWLOG = log Σ exp(scores − ROWMAX)."""
    i_m, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
{seq}    if i_m * BLOCK_M >= seqlen_q:
        return
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_dk = tl.arange(0, BLOCK_DK)
    o_dv = tl.arange(0, BLOCK_DV)
    m_m = o_m < seqlen_q
    qi = o_m[:, None]
    K += k_row0 * D_K
    V += k_row0 * D_V
    b_q = tl.load(Q + (q_row0 + qi) * D_K + o_dk[None, :], mask=m_m[:, None] & (o_dk[None, :] < D_K), other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
{fwd_loops}    # normalise; a row that keeps no key gives 0, and its maximum +inf makes its P = 0 in the backward
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    tl.store(O + (q_row0 + qi) * D_V + o_dv[None, :], acc.to(O.dtype.element_ty), mask=m_m[:, None] & (o_dv[None, :] < D_V))
    tl.store(ROWMAX + q_row0 + o_m, tl.where(l_i == 0.0, float("inf"), m_i), mask=m_m)
    tl.store(ROWLOG + q_row0 + o_m, tl.log(l_safe), mask=m_m)


@triton.jit
def {name}_dkdv_tile(b_dk, b_dv, b_k, b_v, kj, Q, DO, ROWMAX, ROWLOG, DELTA, i_m, seqlen_q, seqlen_k, i_h, i_seq, BIAS,
                     stride_bias_h, n_buckets{rnd_params}, BLOCK_M: tl.constexpr, BLOCK_DK: tl.constexpr,
                     BLOCK_DV: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr, APPLY_MASK: tl.constexpr,
                     DOT_PREC: tl.constexpr):
    """Add query block i_m's share to dK, dV of this key block (P recomputed from the row statistics)."""
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_dk = tl.arange(0, BLOCK_DK)
    o_dv = tl.arange(0, BLOCK_DV)
    m_m = o_m < seqlen_q
    qi = o_m[:, None]
    b_q = tl.load(Q + qi * D_K + o_dk[None, :], mask=m_m[:, None] & (o_dk[None, :] < D_K), other=0.0)
    b_do = tl.load(DO + qi * D_V + o_dv[None, :], mask=m_m[:, None] & (o_dv[None, :] < D_V), other=0.0)
    b_rmax = tl.load(ROWMAX + o_m, mask=m_m, other=float("inf"))
    b_rlog = tl.load(ROWLOG + o_m, mask=m_m, other=0.0)
    b_delta = tl.load(DELTA + o_m, mask=m_m, other=0.0)
    b_s = {name}_scores(b_q, b_k, qi, kj, i_h, BIAS, stride_bias_h, n_buckets, DOT_PREC)
    b_sm = b_s
    if APPLY_MASK:   # a partial tile: the predicate, and the padding
        m_keep = {name}_keep(qi, kj, seqlen_q, seqlen_k, i_h, i_seq{rnd_args}) & (qi < seqlen_q) & (kj < seqlen_k)
        b_sm = tl.where(m_keep, b_s, float("-inf"))
    b_p = tl.exp((b_sm - b_rmax[:, None]) - b_rlog[:, None])   # S − max first: exact near the maximum
    b_dv += tl.dot(tl.trans(b_p).to(b_do.dtype), b_do, input_precision=DOT_PREC)
    b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
    b_ds = b_p * (b_dp - b_delta[:, None])
{cap_grad}    b_dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q, input_precision=DOT_PREC)
    return b_dk, b_dv


@triton.jit
def {name}_bwd_dkdv(Q, K, V, DO, ROWMAX, ROWLOG, DELTA, DK, DV, BIAS, CU{map_params}{rnd_params}, stride_bias_h, n_buckets,
                    seqlen_q_all, seqlen_k_all, H, GROUP, IS_VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, D_K: tl.constexpr,
                    D_V: tl.constexpr, DOT_PREC: tl.constexpr):
    """dK, dV of one key block for one query head (the query blocks that see it)."""
    i_n, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
{seq}    if i_n * BLOCK_N >= seqlen_k:
        return
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_dk = tl.arange(0, BLOCK_DK)
    o_dv = tl.arange(0, BLOCK_DV)
    m_n = o_n < seqlen_k
    kj = o_n[None, :]
    b_k = tl.load(K + (k_row0 + o_n[:, None]) * D_K + o_dk[None, :], mask=m_n[:, None] & (o_dk[None, :] < D_K), other=0.0)
    b_v = tl.load(V + (k_row0 + o_n[:, None]) * D_V + o_dv[None, :], mask=m_n[:, None] & (o_dv[None, :] < D_V), other=0.0)
    Q += q_row0 * D_K
    DO += q_row0 * D_V
    ROWMAX += q_row0
    ROWLOG += q_row0
    DELTA += q_row0
    b_dk = tl.zeros([BLOCK_N, BLOCK_DK], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
{dkdv_loops}    dk_row0 = (i_b * H + i_h).to(tl.int64) * seqlen_k_all + bos     # dK, dV are per query head
    tl.store(DK + (dk_row0 + o_n[:, None]) * D_K + o_dk[None, :], b_dk * {scale}, mask=m_n[:, None] & (o_dk[None, :] < D_K))
    tl.store(DV + (dk_row0 + o_n[:, None]) * D_V + o_dv[None, :], b_dv, mask=m_n[:, None] & (o_dv[None, :] < D_V))


@triton.jit
def {name}_dq_tile(b_dq, b_q, b_do, b_rmax, b_rlog, b_delta, qi, K, V, i_n, seqlen_q, seqlen_k, i_h, i_seq, BIAS, DBIAS,
                   stride_bias_h, n_buckets{rnd_params}, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
                   BLOCK_DV: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr, APPLY_MASK: tl.constexpr,
                   USE_DBIAS: tl.constexpr, DOT_PREC: tl.constexpr):
    """Add key block i_n's share to dQ of this query block (and to the bias table's gradient)."""
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_dk = tl.arange(0, BLOCK_DK)
    o_dv = tl.arange(0, BLOCK_DV)
    m_n = o_n < seqlen_k
    b_k = tl.load(K + o_n[:, None] * D_K + o_dk[None, :], mask=m_n[:, None] & (o_dk[None, :] < D_K), other=0.0)
    b_v = tl.load(V + o_n[:, None] * D_V + o_dv[None, :], mask=m_n[:, None] & (o_dv[None, :] < D_V), other=0.0)
    kj = o_n[None, :]
    b_s = {name}_scores(b_q, b_k, qi, kj, i_h, BIAS, stride_bias_h, n_buckets, DOT_PREC)
    b_sm = b_s
    if APPLY_MASK:   # a partial tile: the predicate, and the padding
        m_keep = {name}_keep(qi, kj, seqlen_q, seqlen_k, i_h, i_seq{rnd_args}) & (qi < seqlen_q) & (kj < seqlen_k)
        b_sm = tl.where(m_keep, b_s, float("-inf"))
    b_p = tl.exp((b_sm - b_rmax[:, None]) - b_rlog[:, None])   # S − max first: exact near the maximum
    b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
    b_ds = b_p * (b_dp - b_delta[:, None])
{cap_grad}{dbias_lines}    b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PREC)
    return b_dq


@triton.jit
def {name}_bwd_dq(Q, K, V, DO, ROWMAX, ROWLOG, DELTA, DQ, BIAS, DBIAS, CU{map_params}{rnd_params}, stride_bias_h, n_buckets,
                  seqlen_q_all, seqlen_k_all, H, GROUP, IS_VARLEN: tl.constexpr, USE_DBIAS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                  D_K: tl.constexpr, D_V: tl.constexpr, DOT_PREC: tl.constexpr):
    """dQ of one query block (the same key blocks as the forward)."""
    i_m, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
{seq}    if i_m * BLOCK_M >= seqlen_q:
        return
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_dk = tl.arange(0, BLOCK_DK)
    o_dv = tl.arange(0, BLOCK_DV)
    m_m = o_m < seqlen_q
    qi = o_m[:, None]
    K += k_row0 * D_K
    V += k_row0 * D_V
    b_q = tl.load(Q + (q_row0 + qi) * D_K + o_dk[None, :], mask=m_m[:, None] & (o_dk[None, :] < D_K), other=0.0)
    b_do = tl.load(DO + (q_row0 + qi) * D_V + o_dv[None, :], mask=m_m[:, None] & (o_dv[None, :] < D_V), other=0.0)
    b_rmax = tl.load(ROWMAX + q_row0 + o_m, mask=m_m, other=float("inf"))
    b_rlog = tl.load(ROWLOG + q_row0 + o_m, mask=m_m, other=0.0)
    b_delta = tl.load(DELTA + q_row0 + o_m, mask=m_m, other=0.0)
    b_dq = tl.zeros([BLOCK_M, BLOCK_DK], dtype=tl.float32)
{dq_loops}    tl.store(DQ + (q_row0 + qi) * D_K + o_dk[None, :], b_dq * {scale}, mask=m_m[:, None] & (o_dk[None, :] < D_K))


{name}_KERNELS = sx.Kernels(fwd={name}_fwd, dkdv={name}_bwd_dkdv, dq={name}_bwd_dq, mask={name}_MASK,
                           bias_kind={bias_kind}, block_m={block_m}, block_n={block_n}, uses_map={uses_map})


def {name}(q, k, v, bias_table=None, *, cu_seqlens=None):
    """softmax attention, mask {mask_src}; scores {score_doc}.

    q [..., Nq, Dk], k [..., Nk, Dk], v [..., Nk, Dv] (heads = dim −3; k/v may have fewer
    heads dividing q's); with cu_seqlens (int32 [S+1]) q/k/v are packed [H, total, D] and the
    mask applies within each sequence. Returns [..., Nq, Dv]; rows that keep no key are 0.
    """
    return sx.attention({name}_KERNELS, q, k, v, bias_table, cu_seqlens=cu_seqlens)
'''


def generate(name: str, mask, *, scale: float, bias_kind: str | None = None, cap: float | None = None,
             block_m: int = 64, block_n: int = 64) -> str:
    """The section of a generated file that defines ``{name}(q, k, v, bias_table=None, *,
    cu_seqlens=None)`` (see the module docstring). Raises ValueError when ``unsupported``
    gives a reason; block sizes are rounded up to powers of two in [16, 128]."""
    if not name.isidentifier():
        raise ValueError(f"section name {name!r} is not an identifier")
    mask = M.Full() if mask is None else M.simplify(mask)
    reason = unsupported(mask, bias_kind=bias_kind, cap=cap)
    if reason is not None:
        raise ValueError(reason)
    # tl.dot wants powers of two ≥ 16: a block hint is rounded up to one (at most 128)
    block_m, block_n = (min(128, max(16, 1 << (max(1, int(b)) - 1).bit_length())) for b in (block_m, block_n))
    leaves = sx.random_leaves(mask)
    closed = sx.has_closed_form(mask)
    rnd_params = "".join(f", RND{n}, RNDOFF{n}" for n in range(len(leaves)))
    map_params = "" if closed else ", MAP_PART, MAP_PCNT, MAP_FULL, MAP_FCNT, MAP_ROW0, map_rows, part_w, full_w"
    score_lines, score_doc = _score_lines(scale, bias_kind, cap)
    c = None if cap is None else float(cap)
    cap_grad = "" if c is None else f"    b_ds = b_ds * (1.0 - (b_s * {1.0 / c!r}) * (b_s * {1.0 / c!r}))   # through the cap: 1 − tanh²\n"
    common = f"seqlen_q, seqlen_k, i_h, i_seq, BIAS, stride_bias_h, n_buckets{rnd_params}"
    fwd_call = (f"acc, m_i, l_i = {name}_fwd_tile(acc, m_i, l_i, b_q, qi, K, V, i_n, {common}, BLOCK_N, BLOCK_DK,"
                " BLOCK_DV, D_K, D_V, {MASKED}, DOT_PREC)")
    dkdv_call = (f"b_dk, b_dv = {name}_dkdv_tile(b_dk, b_dv, b_k, b_v, kj, Q, DO, ROWMAX, ROWLOG, DELTA, i_m, {common}, BLOCK_M,"
                 " BLOCK_DK, BLOCK_DV, D_K, D_V, {MASKED}, DOT_PREC)")
    dq_call = (f"b_dq = {name}_dq_tile(b_dq, b_q, b_do, b_rmax, b_rlog, b_delta, qi, K, V, i_n, seqlen_q, seqlen_k, i_h, i_seq,"
               f" BIAS, DBIAS, stride_bias_h, n_buckets{rnd_params}, BLOCK_N, BLOCK_DK, BLOCK_DV, D_K, D_V,"
               " {MASKED}, USE_DBIAS, DOT_PREC)")
    ph = sx.per_head(mask)
    schedule_doc = ("closed form: loop bounds from the block index (partial, full, partial tiles)" if closed else
                    "block map: lists of partial and full tiles per block, built on the host once per sizes")
    return _TEMPLATE.format(
        name=name, mask_src=mask_constructor_source(mask), score_doc=score_doc, schedule_doc=schedule_doc,
        rnd_params=rnd_params, rnd_args="".join(f", RND{n}, RNDOFF{n}" for n in range(len(leaves))),
        map_params=map_params, keep=predicate(mask, leaves), scale=repr(float(scale)), score_lines=score_lines,
        seq=_SEQ, cap_grad=cap_grad, dbias_lines=_dbias_lines(bias_kind),
        fwd_loops=_schedule(mask, fwd_call, False, ph), dkdv_loops=_schedule(mask, dkdv_call, True, ph),
        dq_loops=_schedule(mask, dq_call, False, ph), bias_kind=repr(bias_kind), block_m=int(block_m),
        block_n=int(block_n), uses_map=repr(not closed))
