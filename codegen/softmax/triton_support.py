"""Host-side helpers of the generated Triton softmax kernels (``triton_gen.py``).

Nothing here is generated; the generated sections import it as ``sx``:

- ``Ex``: tiny integer expressions for the *closed-form block schedules*. The generator
  renders them into the kernels (``tl.maximum`` …) and the host evaluates the very same
  expressions (``evaluate_program``), so the property tests check the code the kernels run;
- ``key_interval`` / ``query_interval``: for a structured mask and a run of rows (columns),
  the key (query) positions some of them keep, and those all of them keep;
- ``block_map``: the host-built schedule of masks without a closed form (global tokens,
  random blocks, butterfly, unions): for every query block the lists of partial and of full
  key tiles (and the transposed lists for the dK/dV kernel), cached per sizes;
- ``attention``: canonicalises shapes (broadcast, grouped-query heads, packed varlen) and
  runs the generated kernels through a ``torch.autograd.Function``
  (FlashAttention-2: row statistics saved, scores recomputed in the backward).

Conventions: i a query position, j a key position, both from 0 inside their sequence.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field

import torch
import triton
from torch import Tensor

from codegen import masks as M
from codegen.softmax.scores import alibi_slopes, normalize_bias

NO_GPU = "Triton kernels need a CUDA device; on a CPU set TRITON_INTERPRET=1 before importing seqdsl"


# ---- integer expressions (rendered into kernels, evaluated on the host) --------------------


class Ex:
    """An integer expression over named scalars. ``//`` is only ever applied to
    non-negative values (Triton truncates, Python floors: ``evaluate`` checks it)."""

    __slots__ = ("op", "args")
    PREC = {"+": 1, "-": 1, "*": 2, "//": 2}

    def __init__(self, op: str, *args):
        self.op, self.args = op, args

    # -- construction with constant folding
    @staticmethod
    def of(x) -> Ex:
        return x if isinstance(x, Ex) else Ex("n", int(x))

    def _bin(self, op: str, other, swap: bool = False) -> Ex:
        a, b = (Ex.of(other), self) if swap else (self, Ex.of(other))
        if a.op == "n" and b.op == "n":
            x, y = a.args[0], b.args[0]
            return Ex.of(x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x // y)
        if op in "+-" and b.op == "n" and b.args[0] == 0:
            return a
        if op == "+" and a.op == "n" and a.args[0] == 0:
            return b
        if op in ("*", "//") and b.op == "n" and b.args[0] == 1:
            return a
        if op == "+" and b.op == "n" and b.args[0] < 0:        # x + -3 reads x - 3
            return Ex("-", a, Ex.of(-b.args[0]))
        return Ex(op, a, b)

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._bin("+", o, True)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._bin("-", o, True)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._bin("*", o, True)
    def __floordiv__(self, o): return self._bin("//", o)

    def render(self) -> str:
        """Triton source text."""
        op, a = self.op, self.args
        if op == "n":
            return repr(int(a[0]))
        if op == "v":
            return a[0]
        if op in ("max", "min"):
            return f"tl.{'maximum' if op == 'max' else 'minimum'}({a[0].render()}, {a[1].render()})"
        if op == "where":
            return f"tl.where({a[0].render()} < {a[1].render()}, {a[2].render()}, {a[3].render()})"
        p = Ex.PREC[op]
        left = a[0].render()
        right = a[1].render()
        if a[0].op in Ex.PREC and Ex.PREC[a[0].op] < p:
            left = f"({left})"
        if a[1].op in Ex.PREC and Ex.PREC[a[1].op] <= p:
            right = f"({right})"
        return f"{left} {op} {right}"

    def evaluate(self, env: dict[str, int]) -> int:
        op, a = self.op, self.args
        if op == "n":
            return a[0]
        if op == "v":
            return env[a[0]]
        x = [e.evaluate(env) for e in a]
        if op == "max":
            return max(x)
        if op == "min":
            return min(x)
        if op == "where":
            return x[2] if x[0] < x[1] else x[3]
        if op == "//":
            if x[0] < 0 or x[1] <= 0:
                raise ArithmeticError(f"{self.render()}: division of {x[0]} by {x[1]} (Triton truncates)")
            return x[0] // x[1]
        return x[0] + x[1] if op == "+" else x[0] - x[1] if op == "-" else x[0] * x[1]


def var(name: str) -> Ex:
    return Ex("v", name)


def emax(a, b) -> Ex:
    a, b = Ex.of(a), Ex.of(b)
    return Ex.of(max(a.args[0], b.args[0])) if a.op == b.op == "n" else Ex("max", a, b)


def emin(a, b) -> Ex:
    a, b = Ex.of(a), Ex.of(b)
    return Ex.of(min(a.args[0], b.args[0])) if a.op == b.op == "n" else Ex("min", a, b)


def where_lt(a, b, then, other) -> Ex:
    """``then if a < b else other``."""
    return Ex("where", Ex.of(a), Ex.of(b), Ex.of(then), Ex.of(other))


def cdiv(x, b) -> Ex:
    return (Ex.of(x) + (b - 1)) // b if not isinstance(b, Ex) else (Ex.of(x) + b - 1) // b


# ---- closed-form intervals of the structured masks --------------------------------------

INTERVAL_LEAVES = (M.Full, M.Causal, M.Window, M.Local, M.Strided, M.Global, M.KeyRange)


def has_closed_form(mask: M.Mask) -> bool:
    """An intersection of structured leaves: its kept keys of a row run are an interval."""
    if isinstance(mask, M.And):
        return has_closed_form(mask.a) and has_closed_form(mask.b)
    return isinstance(mask, INTERVAL_LEAVES)


Interval = tuple[Ex, Ex, Ex, Ex]     # (lo, hi, full_lo, full_hi): [lo, hi) some keep, [full_lo, full_hi) all keep


def key_interval(mask: M.Mask, first: Ex, last: Ex, nk: Ex) -> Interval:
    """Key positions kept by some query in [first, last], and by all of them."""
    zero = Ex.of(0)
    if isinstance(mask, M.And):
        return _meet(key_interval(mask.a, first, last, nk), key_interval(mask.b, first, last, nk))
    if isinstance(mask, M.Full):
        return zero, nk, zero, nk
    if isinstance(mask, M.Causal):                       # j <= i + offset
        return zero, last + (mask.offset + 1), zero, first + (mask.offset + 1)
    if isinstance(mask, M.Global):                       # i < g or j < g
        return zero, where_lt(first, mask.count, nk, mask.count), zero, where_lt(last, mask.count, nk, mask.count)
    if isinstance(mask, M.KeyRange):
        stop = nk if mask.stop is None else Ex.of(mask.stop)
        return Ex.of(mask.start), stop, Ex.of(mask.start), stop
    return _symmetric(mask, first, last, nk)


def query_interval(mask: M.Mask, first: Ex, last: Ex, nq: Ex) -> Interval:
    """Query positions that keep some key in [first, last], and those that keep all of them."""
    zero = Ex.of(0)
    if isinstance(mask, M.And):
        return _meet(query_interval(mask.a, first, last, nq), query_interval(mask.b, first, last, nq))
    if isinstance(mask, M.Full):
        return zero, nq, zero, nq
    if isinstance(mask, M.Causal):                       # i >= j - offset
        return first - mask.offset, nq, last - mask.offset, nq
    if isinstance(mask, M.Global):
        return zero, where_lt(first, mask.count, nq, mask.count), zero, where_lt(last, mask.count, nq, mask.count)
    if isinstance(mask, M.KeyRange):                     # every query, when the keys meet the range
        a, b = mask.start, mask.stop
        some = where_lt(first, b, where_lt(last, a, 0, nq), 0) if b is not None else where_lt(last, a, 0, nq)
        every = where_lt(first, a, 0, where_lt(last, b, nq, 0)) if b is not None else where_lt(first, a, 0, nq)
        return zero, some, zero, every
    return _symmetric(mask, first, last, nq)


def _symmetric(mask: M.Mask, first: Ex, last: Ex, n: Ex) -> Interval:
    """Window, local and strided masks read the same from either side."""
    zero = Ex.of(0)
    if isinstance(mask, M.Window):                       # |i//b - j//b| < w
        w, b = mask.size, mask.block
        if w <= 0:
            return zero, zero, zero, zero
        return ((first // b - (w - 1)) * b, (last // b + w) * b, (last // b - (w - 1)) * b, (first // b + w) * b)
    if isinstance(mask, M.Local):                        # i//s == j//s
        s = mask.size
        return (first // s) * s, (last // s + 1) * s, (last // s) * s, (first // s + 1) * s
    if isinstance(mask, M.Strided):                      # (i - j) % s == 0: no full run unless s == 1
        return zero, n, zero, (n if mask.stride == 1 else zero)
    raise TypeError(f"no closed-form interval for {mask}")


def _meet(x: Interval, y: Interval) -> Interval:
    return emax(x[0], y[0]), emin(x[1], y[1]), emax(x[2], y[2]), emin(x[3], y[3])


def schedule_program(mask: M.Mask, transposed: bool = False) -> list[tuple[str, Ex, str]]:
    """The kernel lines (name, expression, comment) that bound a closed-form block loop.

    Forward / dQ (``transposed`` False): from the query block ``i_m`` to the key blocks
    [blk_lo, blk_hi), with [blkf_lo, blkf_hi) inside it the *full* tiles (every pair kept,
    no key padding: no predicate). dK/dV: the same from the key block ``i_n`` to query blocks.
    """
    i_blk, bs, bo = (var("i_n"), var("BLOCK_N"), var("BLOCK_M")) if transposed else \
        (var("i_m"), var("BLOCK_M"), var("BLOCK_N"))
    n_mine, n_other = (var("seqlen_k"), var("seqlen_q")) if transposed else (var("seqlen_q"), var("seqlen_k"))
    first, last = var("pos_first"), var("pos_last")
    lo, hi, flo, fhi = (query_interval if transposed else key_interval)(mask, first, last, n_other)
    what = "queries" if transposed else "keys"

    def clamp(x: Ex) -> Ex:
        return emin(emax(x, 0), n_other)

    return [
        ("pos_first", i_blk * bs, "first position of this block"),
        ("pos_last", emin(i_blk * bs + bs, n_mine) - 1, "last position of this block"),
        ("pos_lo", lo, f"{what} kept by some position of the block: [pos_lo, pos_hi)"),
        ("pos_hi", hi, ""),
        ("posf_lo", flo, f"{what} kept by every position of the block: [posf_lo, posf_hi)"),
        ("posf_hi", fhi, ""),
        ("blk_lo", clamp(var("pos_lo")) // bo, "blocks to visit: [blk_lo, blk_hi)"),
        ("blk_hi", emax(cdiv(clamp(var("pos_hi")), bo), var("blk_lo")), ""),
        ("blkf_lo", emin(emax(cdiv(clamp(var("posf_lo")), bo), var("blk_lo")), var("blk_hi")),
         "full blocks inside them: [blkf_lo, blkf_hi)"),
        ("blkf_hi", emin(emax(clamp(var("posf_hi")) // bo, var("blkf_lo")), var("blk_hi")), ""),
    ]


def evaluate_program(program, env: dict[str, int]) -> dict[str, int]:
    env = dict(env)
    for name, ex, _ in program:
        env[name] = ex.evaluate(env)
    return env


def closed_schedule(mask: M.Mask, nq: int, nk: int, bm: int, bn: int, transposed: bool = False
                    ) -> tuple[Tensor, Tensor]:
    """(visited, full) [rows, cols] booleans of the closed-form schedule, evaluated on the
    host from ``schedule_program`` (rows: query blocks; key blocks when ``transposed``)."""
    prog = schedule_program(mask, transposed)
    nqb, nkb = -(-nq // bm), -(-nk // bn)
    rows, cols = (nkb, nqb) if transposed else (nqb, nkb)
    visited = torch.zeros(rows, cols, dtype=torch.bool)
    full = torch.zeros(rows, cols, dtype=torch.bool)
    base = {"seqlen_q": nq, "seqlen_k": nk, "BLOCK_M": bm, "BLOCK_N": bn}
    for r in range(rows):
        env = evaluate_program(prog, {**base, ("i_n" if transposed else "i_m"): r})
        visited[r, env["blk_lo"]:env["blk_hi"]] = True
        full[r, env["blkf_lo"]:env["blkf_hi"]] = True
    return visited, full


# ---- block maps (no closed form) ----------------------------------------------------------


def random_leaves(mask: M.Mask) -> list[M.RandomBlocks]:
    if isinstance(mask, (M.And, M.Or)):
        return random_leaves(mask.a) + random_leaves(mask.b)
    return [mask] if isinstance(mask, M.RandomBlocks) else []


def per_head(mask: M.Mask) -> bool:
    return any(r.per_head for r in random_leaves(mask))


@dataclass
class BlockMap:
    """Lists of key tiles per query block (or of query tiles per key block): ``part``
    [L, R, Wp] int32 (tiles that need the predicate), ``full`` [L, R, Wf] (every pair kept,
    no padding), ``pcnt`` / ``fcnt`` [L, R] their lengths; L = heads for per-head random
    blocks, else 1; ``row0`` [S] the first row of each packed sequence."""

    part: Tensor
    pcnt: Tensor
    full: Tensor
    fcnt: Tensor
    row0: Tensor

    def to(self, device) -> BlockMap:
        return BlockMap(*(t.to(device) for t in (self.part, self.pcnt, self.full, self.fcnt, self.row0)))


def tile_grids(mask: M.Mask, nq: int, nk: int, bm: int, bn: int, heads: int) -> tuple[Tensor, Tensor]:
    """(listed, full) [L, nqb, nkb] of the mask's exact schedule; full tiles holding key
    padding (a short last key block) or query padding are moved to the partial ones."""
    sched = mask.blocks(nq, nk, bm, bn, heads)
    listed, full = sched.grids()
    listed = listed.reshape(-1, *listed.shape[-2:]).clone()
    full = full.reshape(-1, *full.shape[-2:]).clone()
    if nk % bn:
        full[..., -1] = False
    if nq % bm:
        full[..., -1, :] = False
    return listed, full


def _lists(grid: Tensor) -> tuple[Tensor, Tensor]:
    """[L, R, C] booleans → (ascending column lists padded with 0, counts)."""
    cols = grid.shape[-1]
    pos = torch.arange(cols)
    order = torch.where(grid, pos, pos + cols).sort(-1).values
    width = max(1, int(grid.sum(-1).max()) if grid.numel() else 1)
    idx = torch.where(order < cols, order, 0)[..., :width]
    return idx.to(torch.int32).contiguous(), grid.sum(-1).to(torch.int32).contiguous()


@functools.lru_cache(maxsize=32)
def block_map(mask: M.Mask, lengths: tuple[tuple[int, int], ...], bm: int, bn: int, heads: int,
              transposed: bool) -> BlockMap:
    """The block map of ``mask`` for packed sequences of (nq, nk) ``lengths`` (one entry
    without varlen), rows concatenated over the sequences."""
    parts, fulls, row0, start = [], [], [], 0
    for nq, nk in lengths:
        listed, full = tile_grids(mask, nq, nk, bm, bn, heads)
        if transposed:
            listed, full = listed.transpose(-1, -2), full.transpose(-1, -2)
        parts.append(listed & ~full)
        fulls.append(full)
        row0.append(start)
        start += listed.shape[-2]
    width = max(g.shape[-1] for g in parts)
    lead = max(g.shape[0] for g in parts)

    def cat(gs):
        return torch.cat([torch.nn.functional.pad(g, (0, width - g.shape[-1])).expand(lead, -1, -1) for g in gs], -2)

    part, pcnt = _lists(cat(parts))
    full, fcnt = _lists(cat(fulls))
    return BlockMap(part, pcnt, full, fcnt, torch.tensor(row0, dtype=torch.int32))


def host_schedule(mask: M.Mask, nq: int, nk: int, bm: int, bn: int, heads: int = 1, transposed: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """(visited, full) [L, rows, cols] booleans of the schedule the generated kernels follow
    (closed form evaluated from ``schedule_program``, or the block map's lists)."""
    mask = M.simplify(mask)
    if has_closed_form(mask):
        visited, full = closed_schedule(mask, nq, nk, bm, bn, transposed)
        return visited[None], full[None]
    bmap = block_map(mask, ((nq, nk),), bm, bn, heads, transposed)
    rows = bmap.pcnt.shape[-1]
    cols = -(-(nq if transposed else nk) // (bm if transposed else bn))

    def grid(idx: Tensor, cnt: Tensor) -> Tensor:
        g = torch.zeros(idx.shape[0], rows, cols + 1, dtype=torch.bool)
        live = torch.arange(idx.shape[-1]) < cnt[..., None]
        return g.scatter(-1, torch.where(live, idx.long(), cols), True)[..., :cols]

    part, full = grid(bmap.part, bmap.pcnt), grid(bmap.full, bmap.fcnt)
    return part | full, full


@functools.lru_cache(maxsize=32)
def block_map_on(mask: M.Mask, lengths: tuple[tuple[int, int], ...], bm: int, bn: int, heads: int,
                 transposed: bool, device: str) -> BlockMap:
    """``block_map`` copied to ``device`` once (not at every call)."""
    return block_map(mask, lengths, bm, bn, heads, transposed).to(device)


@functools.lru_cache(maxsize=32)
def random_tables(mask: M.Mask, lengths: tuple[tuple[int, int], ...], heads: int, device: str
                  ) -> list[tuple[Tensor, Tensor]]:
    """For every random-blocks leaf: (its coarse grids flattened and packed over the
    sequences as uint8, the offset of each sequence's grid)."""
    out = []
    for leaf in random_leaves(mask):
        grids, offs, at = [], [], 0
        for nq, nk in lengths:
            g = leaf.grid(nq, nk, heads if leaf.per_head else None).to(torch.uint8).reshape(-1)
            grids.append(g)
            offs.append(at)
            at += g.numel()
        out.append((torch.cat(grids).to(device), torch.tensor(offs, dtype=torch.int64, device=device)))
    return out


# ---- running the kernels ------------------------------------------------------------------


def scratch(shape, dtype, device) -> Tensor:
    """Kernel outputs: NaN-filled when SEQDSL_TRITON_NAN_SCRATCH=1 (tests), so reads of
    unwritten memory show."""
    if os.environ.get("SEQDSL_TRITON_NAN_SCRATCH") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass(eq=False)
class Kernels:
    """What a generated section hands to ``attention``."""

    fwd: object
    dkdv: object
    dq: object
    mask: M.Mask
    bias_kind: str | None
    block_m: int
    block_n: int
    uses_map: bool
    random: list = field(default_factory=list)


def _check_device(*xs: Tensor) -> None:
    if any(not x.is_cuda for x in xs) and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(NO_GPU)


def attention(spec: Kernels, q: Tensor, k: Tensor, v: Tensor, bias_table: Tensor | None = None, *,
              cu_seqlens: Tensor | None = None) -> Tensor:
    """Shapes as ``softmax_attention`` (heads = dim −3; k/v may have fewer heads dividing
    q's: grouped-query attention); with ``cu_seqlens`` q/k/v are packed [H, total, D]."""
    _check_device(q, k, v)
    if spec.bias_kind is not None:
        normalize_bias((spec.bias_kind, bias_table))
    elif bias_table is not None:
        raise ValueError("this attention has no positional bias, but a bias table was given")
    if cu_seqlens is not None:
        if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
            raise ValueError("with cu_seqlens, q, k and v are packed [H, total, D]")
        if q.shape[1] != k.shape[1] or k.shape[1] != v.shape[1]:
            raise ValueError("with cu_seqlens, q, k and v hold the same packed sequences")
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        if int(cu[-1]) != q.shape[1] or int(cu[0]) != 0:
            raise ValueError(f"cu_seqlens must run from 0 to the packed length {q.shape[1]}")
        lens = tuple((n, n) for n in cu.diff().tolist())
        out = _run(spec, q[None], k[None], v[None], bias_table, cu, lens)
        return out[0]
    flat = max(q.dim(), k.dim(), v.dim()) == 2          # [N, D] operands: no batch, one head
    nd = max(q.dim(), k.dim(), v.dim(), 3)
    q, k, v = (x.reshape((1,) * (nd - x.dim()) + tuple(x.shape)) for x in (q, k, v))
    batch = tuple(torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3]))
    hkv = torch.broadcast_shapes(k.shape[-3:-2], v.shape[-3:-2])[0]
    hq = q.shape[-3]
    heads = hq if hq != 1 else hkv
    if heads % hkv:
        raise ValueError(f"k/v have {hkv} heads, which do not divide q's {heads}")
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"attention shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    nb, nq, nk = math.prod(batch), q.shape[-2], k.shape[-2]
    qc = q.expand(*batch, heads, *q.shape[-2:]).reshape(nb, heads, *q.shape[-2:])
    kc = k.expand(*batch, hkv, *k.shape[-2:]).reshape(nb, hkv, *k.shape[-2:])
    vc = v.expand(*batch, hkv, *v.shape[-2:]).reshape(nb, hkv, *v.shape[-2:])
    if nq == 0 or nk == 0:          # no query, or no key for any query: every row is 0
        out = torch.zeros(nb, heads, nq, v.shape[-1], dtype=v.dtype, device=v.device)
    else:
        out = _run(spec, qc, kc, vc, bias_table, None, ((nq, nk),))
    return out.reshape(nq, -1) if flat else out.reshape(*batch, heads, nq, v.shape[-1])


def _run(spec, q, k, v, table, cu, lengths):
    return _Attention.apply(q.contiguous(), k.contiguous(), v.contiguous(), table, spec, cu, lengths)


class _Attention(torch.autograd.Function):
    """FlashAttention-2 on the generated kernels. Every tensor the kernels touch is
    contiguous: q, dq [B, H, Nq, Dk]; o, do [B, H, Nq, Dv]; k [B, Hkv, Nk, Dk]; v [B, Hkv,
    Nk, Dv]; rowmax, rowlog, delta [B, H, Nq] (float32); with varlen B = 1 and N the packed
    length. The row statistics stay apart (rowmax = max scores, rowlog = log Σ exp(scores −
    rowmax)): their float32 sum would scale all of P by its rounding when scores are large."""

    @staticmethod
    def forward(ctx, q, k, v, table, spec: Kernels, cu, lengths):
        B, H, nq, _ = q.shape
        hkv, dv = k.shape[1], v.shape[3]
        o = scratch((B, H, nq, dv), q.dtype, q.device)
        rowmax = scratch((B, H, nq), torch.float32, q.device)       # max scores per row; +inf: no kept key
        rowlog = scratch((B, H, nq), torch.float32, q.device)       # log Σ exp(scores − rowmax) per row
        table_k = _bias_arg(spec, table, H, q.device)
        nseq = len(lengths) if cu is not None else B
        grid = (triton.cdiv(max(a for a, _ in lengths), spec.block_m), H, nseq)
        args = _common_args(spec, q, k, v, table_k, cu, lengths, H, hkv, transposed=False)
        _launch(spec.fwd, grid, args, Q=q, K=k, V=v, O=o, ROWMAX=rowmax, ROWLOG=rowlog)
        ctx.save_for_backward(q, k, v, o, rowmax, rowlog, table)
        ctx.meta = (spec, cu, lengths, table_k)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, rowmax, rowlog, table = ctx.saved_tensors
        spec, cu, lengths, table_k = ctx.meta
        B, H, nq, dk = q.shape
        hkv, nk, dv = k.shape[1], k.shape[2], v.shape[3]
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).contiguous()           # rowsum(dO ∘ O): read 2·Nq·Dv, write Nq
        want_bias = table is not None and ctx.needs_input_grad[3]
        dbias = torch.zeros(table_k.shape, dtype=torch.float32, device=q.device) if want_bias else None
        nseq = len(lengths) if cu is not None else B
        # dK, dV: one program per key block, per query head (groups are summed below)
        dk_h = scratch((B, H, nk, dk), torch.float32, q.device)
        dv_h = scratch((B, H, nk, dv), torch.float32, q.device)
        args = _common_args(spec, q, k, v, table_k, cu, lengths, H, hkv, transposed=True)
        grid = (triton.cdiv(max(b for _, b in lengths), spec.block_n), H, nseq)
        _launch(spec.dkdv, grid, args, Q=q, K=k, V=v, DO=do, ROWMAX=rowmax, ROWLOG=rowlog, DELTA=delta, DK=dk_h, DV=dv_h)
        # dQ (and the bias table's gradient): one program per query block
        dq = scratch((B, H, nq, dk), torch.float32, q.device)
        args = _common_args(spec, q, k, v, table_k, cu, lengths, H, hkv, transposed=False)
        grid = (triton.cdiv(max(a for a, _ in lengths), spec.block_m), H, nseq)
        _launch(spec.dq, grid, args, Q=q, K=k, V=v, DO=do, ROWMAX=rowmax, ROWLOG=rowlog, DELTA=delta, DQ=dq,
                DBIAS=dbias if want_bias else table_k, USE_DBIAS=want_bias)
        g = H // hkv
        dk_ = dk_h.view(B, hkv, g, nk, dk).sum(2).to(k.dtype)
        dv_ = dv_h.view(B, hkv, g, nk, dv).sum(2).to(v.dtype)
        dtable = dbias.reshape(table.shape).to(table.dtype) if want_bias else None
        return dq.to(q.dtype), dk_, dv_, dtable, None, None, None


def _bias_arg(spec: Kernels, table, heads: int, device) -> Tensor:
    """The bias table the kernels read: ALiBi slopes [H] or [1], relative [Hb, buckets]."""
    if spec.bias_kind is None:
        return torch.zeros(1, 1, dtype=torch.float32, device=device)
    if spec.bias_kind == "alibi" and table is None:
        return alibi_slopes(heads, device).reshape(heads, 1).contiguous()
    hb = table.shape[0]
    if hb not in (1, heads):
        raise ValueError(f"{spec.bias_kind} bias has {hb} heads, the attention {heads}")
    return table.detach().to(device=device, dtype=torch.float32).reshape(hb, -1).contiguous()


def _common_args(spec, q, k, v, table, cu, lengths, heads, hkv, transposed: bool) -> dict:
    device = q.device
    dk, dv = q.shape[-1], v.shape[-1]
    args = dict(
        BIAS=table, stride_bias_h=table.shape[1] if table.shape[0] > 1 else 0, n_buckets=table.shape[1],
        CU=cu if cu is not None else torch.zeros(2, dtype=torch.int32, device=device),
        seqlen_q_all=q.shape[2], seqlen_k_all=k.shape[2], H=heads, GROUP=heads // hkv, IS_VARLEN=cu is not None,
        BLOCK_M=spec.block_m, BLOCK_N=spec.block_n, D_K=dk, D_V=dv,
        BLOCK_DK=max(16, triton.next_power_of_2(dk)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
        DOT_PREC="ieee" if q.dtype == torch.float32 and os.environ.get("SEQDSL_TRITON_TF32") != "1" else "tf32",
    )
    if spec.uses_map:
        bmap = block_map_on(spec.mask, lengths, spec.block_m, spec.block_n, heads, transposed, str(device))
        args.update(MAP_PART=bmap.part, MAP_PCNT=bmap.pcnt, MAP_FULL=bmap.full, MAP_FCNT=bmap.fcnt,
                    MAP_ROW0=bmap.row0, map_rows=bmap.pcnt.shape[-1], part_w=bmap.part.shape[-1],
                    full_w=bmap.full.shape[-1])
    for n, (grid, offs) in enumerate(random_tables(spec.mask, lengths, heads, str(device))):
        args[f"RND{n}"], args[f"RNDOFF{n}"] = grid, offs
    return args


def _launch(kernel, grid, args: dict, **more) -> None:
    """Call a generated kernel with the arguments it declares (by name)."""
    args = {**args, **more}
    missing = [n for n in kernel.arg_names if n not in args]
    if missing:
        raise RuntimeError(f"internal: no value for kernel arguments {missing}")
    kernel[grid](**{n: args[n] for n in kernel.arg_names})
