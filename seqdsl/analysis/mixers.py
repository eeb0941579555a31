"""Cost of a MIX node under each algorithm its structure admits (SPEC §1).

Notation in the docstrings: G = batch × heads (the broadcast leading dims), Nq/Nk query and
key lengths, Dk/Dv key and value widths, F the feature width after φ (Dk, or the number
of random/spectral features), P the kept (query, key) pairs of the mask, T the pairs in
the tiles a tiled kernel visits (T ≥ P), C the chunk, S the SSM state, e bytes/element.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from seqdsl.analysis import masks
from seqdsl.analysis.estimates import SRAM, Estimates
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind

# Tile and chunk sizes stay symbols in the formulas (a mix's hint replaces them by its
# number); their values are in the report's sizes.
BLOCK = sympy.Symbol("BLOCK", positive=True, integer=True)          # tile of the tiled softmax
CHUNK = sympy.Symbol("CHUNK", positive=True, integer=True)          # chunk of chunked linear attention
FFT_CHUNK = sympy.Symbol("FFT_CHUNK", positive=True, integer=True)  # FFT length of one chunk
TILE_DEFAULTS = {BLOCK: 64, CHUNK: 64, FFT_CHUNK: 4096}
LOG2 = sympy.log(2)


def log2(x: sympy.Expr) -> sympy.Expr:
    return sympy.log(x) / LOG2


@dataclass(frozen=True)
class MixShapes:
    g: sympy.Expr      # batch × heads
    nq: sympy.Expr
    nk: sympy.Expr
    dk: sympy.Expr | None
    dv: sympy.Expr
    e: int             # bytes per element

    @property
    def io(self) -> sympy.Expr:
        """Elements of q, k, v and the output."""
        dk = self.dk or 0
        return self.g * (self.nq * dk + self.nk * dk + self.nk * self.dv + self.nq * self.dv)


def shapes_of(g: Graph, n: Node) -> MixShapes:
    out = n.out
    v = g.type_of(n.input("v"))
    q = n.input("q")
    lead = sympy.Mul(*out.shape[:-2]) if out.rank > 2 else sympy.Integer(1)
    dk = g.type_of(q).shape[-1] if q is not None else None
    dtype = n.spec.hint("dtype")
    e = 2 if dtype in ("fp16", "bf16") else 4
    return MixShapes(lead, out.shape[-2], v.shape[-2], dk, v.shape[-1], e)


def _bucket_count(g: Graph, n: Node, mask) -> sympy.Expr | None:
    for leaf in M.mask_leaves(mask):
        if isinstance(leaf, M.Buckets):
            port = n.input(leaf.ids.role)
            producer = g.node(port.node)
            if producer.kind == OpKind.HASH:
                return producer.attr("buckets")
    return None


@dataclass(frozen=True)
class PairCounts:
    pairs: sympy.Expr            # kept pairs per (batch, head)
    tiles: sympy.Expr            # visited tiles per (batch, head)
    exact: bool                  # closed form or exact count (False: an upper bound)


def pair_counts(g: Graph, n: Node, s: MixShapes, subs: dict, block) -> PairCounts:
    """Kept pairs and visited tiles as formulas: closed forms where the mask algebra has
    them; otherwise (unions, compositions) an upper bound built from the parts' closed
    forms, and the row is marked as a bound."""
    mask = n.spec.mask
    buckets = _bucket_count(g, n, mask)
    pairs = masks.closed_pairs(mask, s.nq, s.nk, buckets)
    tiles = masks.closed_tiles(mask, s.nq, s.nk, block, block)
    exact = pairs is not None and tiles is not None
    if pairs is None:
        pairs = _pair_bound(mask, s, buckets)
    if tiles is None:
        tiles = _tile_bound(mask, s, buckets, block)
    return PairCounts(pairs, tiles, exact)


def _pair_bound(mask, s: MixShapes, buckets) -> sympy.Expr:
    """|A ∪ B| ≤ |A| + |B| and |A ∩ B| ≤ min(|A|, |B|), never more than Nq·Nk."""
    return sympy.Min(s.nq * s.nk, _sum_of_parts(mask, lambda leaf: masks.closed_pairs(
        leaf, s.nq, s.nk, buckets), s.nq * s.nk))


def _tile_bound(mask, s: MixShapes, buckets, block) -> sympy.Expr:
    """Visited tiles, bounded the same way from each part's tiles."""
    full = (s.nq / block) * (s.nk / block)
    return sympy.Min(full, _sum_of_parts(mask, lambda leaf: masks.closed_tiles(leaf, s.nq, s.nk, block, block)
                                         or masks.leaf_tiles(leaf, s.nq, s.nk, block, buckets), full))


def _sum_of_parts(mask, closed, everything) -> sympy.Expr:
    found = closed(mask)
    if found is not None:
        return found
    if isinstance(mask, M.Or):
        return _sum_of_parts(mask.left, closed, everything) + _sum_of_parts(mask.right, closed, everything)
    if isinstance(mask, M.And):
        return sympy.Min(_sum_of_parts(mask.left, closed, everything), _sum_of_parts(mask.right, closed, everything))
    return everything


# ======================================================================================
# Softmax family
# ======================================================================================

SOFTMAX_ELEMENTWISE = 5   # scale, mask, subtract max, exp, divide — per kept score


def softmax_materialized(s: MixShapes, pc: PairCounts) -> Estimates:
    """All Nq×Nk scores are formed (masked ones too), then softmax, then P·V.
    flops = G·Nq·Nk·(2Dk + 2Dv + 5); HBM (FlashAttention's Algorithm 0): read Q, K, V,
    write and read S, write and read P, write O: e·(io + 4·G·Nq·Nk)."""
    full = s.g * s.nq * s.nk
    mm = 2 * full * (s.dk + s.dv)
    return Estimates(
        flops=mm + SOFTMAX_ELEMENTWISE * full,
        matmul_flops=mm,
        activation_bytes=s.e * (2 * full + s.g * s.nq * s.dv),
        hbm_bytes=s.e * (s.io + 4 * full),
    )


def softmax_tiled(s: MixShapes, pc: PairCounts, block) -> Estimates:
    """Online softmax over the visited tiles only (FlashAttention-2 order: each query tile
    streams the key tiles it needs). flops = G·T·(2Dk + 2Dv + 5) with T = tiles·B² the
    pairs in visited tiles. HBM, with the paper's tile of B = SRAM/(4·Dk) rows: Q read and
    O written once, and every visited key row read (K and V) once per query tile:
    e·G·(Nq·(Dk + Dv + 2) + T·4·Dk·(Dk + Dv)/SRAM) — Θ(Nd + N²d²·s/M) at density s."""
    t = s.g * pc.tiles * block * block
    mm = 2 * t * (s.dk + s.dv)
    kv_reads = t * 4 * s.dk * (s.dk + s.dv) / SRAM
    return Estimates(
        flops=mm + SOFTMAX_ELEMENTWISE * t,
        matmul_flops=mm,
        activation_bytes=s.e * s.g * s.nq * (s.dv + 2),
        hbm_bytes=s.e * (s.g * s.nq * (s.dk + s.dv + 2) + kv_reads),
    )


def softmax_backward(algorithm: str, s: MixShapes, fwd: Estimates, pc: PairCounts, block) -> Estimates:
    """Backward of softmax attention. Materialised (FlashAttention's Algorithm 3): four
    products (dV = PᵀdO, dP = dO·Vᵀ, dS, dQ = dS·K, dK = dSᵀQ): 2× the forward products;
    HBM e·(7·G·Nq·Nk + io + 4·G·Nq·Dv). Tiled: S and P are recomputed (2.5× the forward
    products); K, V read and dK, dV written once, and per visited key tile the rows of
    Q, dO, dQ (read and written) and the row statistics: e·G·(2·Nk·(Dk+Dv) + T·4·Dk·(2Dk+2Dv+2)/SRAM)."""
    if algorithm == "materialized":
        full = s.g * s.nq * s.nk
        return Estimates(flops=2 * fwd.flops, matmul_flops=2 * fwd.matmul_flops,
                         activation_bytes=fwd.activation_bytes,
                         hbm_bytes=s.e * (7 * full + s.io + 4 * s.g * s.nq * s.dv))
    t = s.g * pc.tiles * block * block
    q_reads = t * 4 * s.dk * (2 * s.dk + 2 * s.dv + 2) / SRAM
    return Estimates(flops=fwd.flops * sympy.Rational(5, 2), matmul_flops=fwd.matmul_flops * sympy.Rational(5, 2),
                     activation_bytes=fwd.activation_bytes,
                     hbm_bytes=s.e * (s.g * 2 * s.nk * (s.dk + s.dv) + q_reads))


# ======================================================================================
# Linear / kernel and decayed families
# ======================================================================================

def feature_width(g: Graph, n: Node, s: MixShapes) -> sympy.Expr:
    f = n.spec.feature
    if f is None or f.features is None:
        return s.dk
    if f.kind.startswith("spectral"):                # cos, sin of m (± pairs: 2m) frequencies, and s
        return 2 * _frequencies(f) + (1 if "+" in f.kind else 0)
    return f.features


def _frequencies(f) -> sympy.Expr:
    """Rows of the projection: m, or 2m for GMM-RKS's ± pairs (spectral_pm)."""
    return 2 * f.features if f.kind.startswith("spectral_pm") else f.features


def _feature_cost(g: Graph, n: Node, s: MixShapes, width) -> Estimates:
    """φ of q and k: a projection to m features for favor/spectral, elementwise otherwise;
    φ(q) and φ(k) are materialised (G·(Nq + Nk)·F elements) unless φ is the identity."""
    f = n.spec.feature
    if f is None or f.kind == "identity":
        return Estimates()
    tokens = s.g * (s.nq + s.nk)
    held = s.e * tokens * width
    if f.projection is not None:
        mm = 2 * tokens * s.dk * _frequencies(f)
        return Estimates(flops=mm + 3 * tokens * width, matmul_flops=mm, activation_bytes=held)
    return Estimates(flops=tokens * width, activation_bytes=held)


def linear_quadratic(g, n, s: MixShapes, f) -> Estimates:
    """(φ(Q)φ(K)ᵀ ∘ L)·V with the Nq×Nk matrix formed: G·Nq·Nk·(2F + 2Dv + 2)."""
    full = s.g * s.nq * s.nk
    mm = 2 * full * (f + s.dv)
    extra = 2 * full + (2 * full if n.spec.norm == "sum" else 0)
    return _feature_cost(g, n, s, f) + Estimates(
        flops=mm + extra, matmul_flops=mm,
        activation_bytes=s.e * (full + s.g * s.nq * s.dv),
        hbm_bytes=s.e * (s.io + 2 * full))


def linear_recurrent(g, n, s: MixShapes, f) -> Estimates:
    """Token by token: S_t = a_t ⊙ S_{t−1} + φ(k_t)v_tᵀ, o_t = φ(q_t)ᵀS_t; state F×Dv kept
    on chip: G·N·(4·F·Dv [+ F·Dv for a decay] [+ 4F for the normaliser]); no matrix products."""
    decay = any(isinstance(x, M.Decay) for x in M.mask_leaves(n.spec.mask))
    per_token = 4 * f * s.dv + (f * s.dv if decay else 0) + (4 * f if n.spec.norm == "sum" else 0)
    return _feature_cost(g, n, s, f) + Estimates(
        flops=s.g * s.nk * per_token,
        activation_bytes=s.e * s.g * (f * s.dv + s.nq * s.dv),
        hbm_bytes=s.e * s.io)


def linear_chunked(g, n, s: MixShapes, f, chunk) -> Estimates:
    """Chunks of C: inside, the quadratic form (2·C·(F + Dv) per token); between, the F×Dv
    state passed with the decay (4·F·Dv per token): G·N·(2C(F+Dv) + 4F·Dv), all matrix
    products. Held: the state entering every chunk (G·(N/C)·F·Dv, kept for the backward
    pass), the chunk scores (G·N·C), the intra- and inter-chunk partial outputs and their
    sum (3·G·Nq·Dv)."""
    n_tok = s.g * s.nk
    mm = n_tok * (2 * chunk * (f + s.dv) + 4 * f * s.dv)
    decay = any(isinstance(x, M.Decay) for x in M.mask_leaves(n.spec.mask))
    extra = n_tok * chunk * (2 if decay else 1) + (n_tok * 4 * f if n.spec.norm == "sum" else 0)
    states = s.g * (s.nk / chunk) * f * s.dv
    return _feature_cost(g, n, s, f) + Estimates(
        flops=mm + extra, matmul_flops=mm,
        activation_bytes=s.e * (states + s.g * s.nk * chunk + 3 * s.g * s.nq * s.dv),
        hbm_bytes=s.e * (s.io + 2 * states))


# ======================================================================================
# Toeplitz family (long convolutions)
# ======================================================================================

def _kernel_generation(spec_kernel, channels, n_len, state) -> Estimates:
    """Materialise K[0:N] per channel: a Vandermonde product for diagonal SSMs (8 flops per
    complex state and position), a Cauchy/Woodbury correction for DPLR, a copy otherwise."""
    if isinstance(spec_kernel, M.SSMKernel):
        if spec_kernel.kind == "shift":
            return Estimates(flops=channels * state)
        half = state / 2 if spec_kernel.conj and spec_kernel.kind in ("diag", "dplr") else state
        mult = 8 if spec_kernel.kind in ("diag", "dplr") else 2
        extra = 8 * channels * half * n_len if spec_kernel.kind == "dplr" else 0
        out = channels * (channels if spec_kernel.mimo else 1)
        return Estimates(flops=mult * out * half * n_len + extra,
                         matmul_flops=2 * out * half * n_len if spec_kernel.mimo else 0)
    return Estimates()


def toeplitz_direct(s: MixShapes, kern, state, channels) -> Estimates:
    """y_i = Σ_{j≤i} K[i−j] u_j directly: G·C·N² (causal; 2·G·C·N² bidirectional). A shift
    SSM's kernel has only S taps (K_l = 0 for l ≥ S): a short convolution, G·C·N·S."""
    causal = kern.causal
    pairs = s.nq * (s.nq + 1) / 2 if causal else s.nq * s.nq
    if isinstance(kern.kernel, M.SSMKernel) and kern.kernel.kind == "shift":
        pairs = s.nq * state * (1 if causal else 2)
    work = 2 * s.g * s.dv * pairs
    # bidirectional: the backward SSM's kernel too (it shares Λ with the forward one as
    # released, but its own C makes it a second Vandermonde product)
    gen = _kernel_generation(kern.kernel, channels, s.nq, state).scaled(1 if causal else 2)
    return gen + Estimates(
        flops=work, activation_bytes=s.e * (channels * s.nq + s.g * s.nq * s.dv),
        hbm_bytes=s.e * (2 * s.g * s.nq * s.dv + channels * s.nq))


def fft_flops(n: sympy.Expr) -> sympy.Expr:
    """A real FFT of length n: 2.5·n·log2(n) (half of the complex 5·n·log2 n)."""
    return sympy.Rational(5, 2) * n * log2(n)


def toeplitz_fft(s: MixShapes, kern, state, channels) -> Estimates:
    """Pad to 2N, y = irfft(rfft(u)·rfft(K))[:N]: per channel two forward and one inverse
    real FFT of 2N and 6(N+1) flops of complex products; the spectra of u and of the
    product are held (2 × (N+1) complex per channel)."""
    n2 = 2 * s.nq
    per_row = 2 * fft_flops(n2) + 6 * (s.nq + 1)
    return _kernel_generation(kern.kernel, channels, s.nq, state) + Estimates(
        flops=s.g * s.dv * per_row + channels * fft_flops(n2),
        activation_bytes=s.e * (s.g * s.dv * 4 * (s.nq + 1) + 2 * channels * (s.nq + 1) + s.g * s.nq * s.dv),
        hbm_bytes=s.e * (2 * s.g * s.nq * s.dv + channels * s.nq))


def _state_width(kern) -> sympy.Expr:
    k = kern.kernel
    return k.state


def toeplitz_chunked_fft(s: MixShapes, kern, state, channels, chunk) -> Estimates:
    """Chunks of C convolved by FFT of 2C with the kernel's first C taps, plus the SSM
    state carried across chunk boundaries (FlashConv's state passing): per channel
    (N/C)·(2·FFT(2C) + 6C) + N·4S for the state's contribution; memory O(C + S)."""
    n_chunks = s.nq / chunk
    per_row = n_chunks * (2 * fft_flops(2 * chunk) + 6 * (chunk + 1)) + 4 * state * s.nq
    return _kernel_generation(kern.kernel, channels, chunk, state) + Estimates(
        flops=s.g * s.dv * per_row + channels * fft_flops(2 * chunk),
        activation_bytes=s.e * (s.g * s.dv * (4 * (chunk + 1) + 2 * state) + s.g * s.nq * s.dv),
        hbm_bytes=s.e * (2 * s.g * s.nq * s.dv + channels * chunk))


def toeplitz_scan(s: MixShapes, kern, state, channels) -> Estimates:
    """The recurrence h_t = Ā h_{t−1} + B̄ u_t, y_t = C h_t step by step: 4 flops per state
    and step per channel (8 for complex states); a MIMO state (S5) is shared by the
    channels, with B̄u and Ch as products: 2·S·C each per step."""
    k = kern.kernel
    complex_state = k.kind in ("diag", "dplr")
    if k.mimo:
        per_step = 4 * state * s.dv + (8 if complex_state else 4) * state
        work = s.g * s.nq * per_step
        return Estimates(flops=work, matmul_flops=s.g * s.nq * 4 * state * s.dv,
                         activation_bytes=s.e * s.g * (state + s.nq * s.dv),
                         hbm_bytes=s.e * 2 * s.g * s.nq * s.dv)
    per_step = (8 if complex_state else 4) * (state / 2 if complex_state and k.conj else state)
    return Estimates(flops=s.g * s.dv * s.nq * per_step,
                     activation_bytes=s.e * s.g * (s.dv * state + s.nq * s.dv),
                     hbm_bytes=s.e * 2 * s.g * s.nq * s.dv)


@dataclass(frozen=True)
class Candidate:
    algorithm: str
    forward: Estimates
    backward: Estimates
    exact: bool = True          # False when the mask's pair count is an upper bound
    steps: sympy.Expr = sympy.Integer(1)   # sequential steps (N for a scan, N/C chunked)


def _default_backward(fwd: Estimates) -> Estimates:
    """The usual rule: the backward pass does twice the forward's work and traffic."""
    return Estimates(flops=2 * fwd.flops, matmul_flops=2 * fwd.matmul_flops,
                     activation_bytes=fwd.activation_bytes, hbm_bytes=2 * fwd.hbm_bytes)


def candidates(g: Graph, n: Node, subs: dict) -> list[Candidate]:
    """Every algorithm the node's structure admits, with its forward and backward cost."""
    spec = n.spec
    s = shapes_of(g, n)
    fam = spec.family
    out: list[Candidate] = []

    def add(name: str, fwd: Estimates, bwd: Estimates | None = None, exact: bool = True,
            steps: sympy.Expr = sympy.Integer(1)) -> None:
        out.append(Candidate(name, fwd, bwd if bwd is not None else _default_backward(fwd), exact, steps))

    if fam in ("softmax", "content_sparse", "synthetic"):
        block = spec.hint("block") or BLOCK
        if s.dk is None:   # given scores: the only work is softmax and P·V
            full = s.g * s.nq * s.nk
            mm = 2 * full * s.dv
            add("materialized", Estimates(flops=mm + SOFTMAX_ELEMENTWISE * full, matmul_flops=mm,
                                          activation_bytes=s.e * (full + s.g * s.nq * s.dv),
                                          hbm_bytes=s.e * (s.io + 3 * full)))
            return out
        pc = pair_counts(g, n, s, subs, block)
        fwd = softmax_materialized(s, pc)
        add("materialized", fwd, softmax_backward("materialized", s, fwd, pc, block))
        if fam == "softmax" and sdpa_supported(spec, s):
            # The library kernel comes first: on a tie the selector keeps the first.
            pcs = PairCounts(*_sdpa_pairs(spec, s, block), True)
            fwd = softmax_tiled(s, pcs, block)
            add("sdpa", fwd, softmax_backward("tiled", s, fwd, pcs, block))
        fwd = softmax_tiled(s, pc, block)
        add("tiled", fwd, softmax_backward("tiled", s, fwd, pc, block), pc.exact)
        return out
    if fam in ("linear", "decayed_linear"):
        f = feature_width(g, n, s)
        chunk = spec.hint("chunk") or CHUNK
        add("quadratic", linear_quadratic(g, n, s, f))
        add("recurrent", linear_recurrent(g, n, s, f), steps=s.nk)
        add("chunked", linear_chunked(g, n, s, f, chunk), steps=s.nk / chunk)
        return out
    if fam == "toeplitz":
        kern = next(x for x in M.mask_leaves(spec.mask) if isinstance(x, M.Toeplitz))
        channels = s.dv
        state = kern.kernel.state if isinstance(kern.kernel, M.SSMKernel) else sympy.Integer(0)
        chunk = spec.hint("chunk") or FFT_CHUNK
        add("direct", toeplitz_direct(s, kern, state, channels))
        # bidirectional: a second kernel and convolution, backwards in time (toeplitz_mix)
        add("fft", toeplitz_fft(s, kern, state, channels).scaled(1 if kern.causal else 2))
        # DSS with a free Re Λ (a_real = free): a mode with Re Λ > 0 grows, only its normalised
        # kernel is bounded, so no algorithm that carries the state is offered
        if isinstance(kern.kernel, M.SSMKernel) and kern.kernel.a_real != "free":
            # bidirectional: a second pass backwards in time
            passes = 1 if kern.causal else 2
            add("chunked_fft", toeplitz_chunked_fft(s, kern, state, channels, chunk).scaled(passes),
                steps=passes * s.nq / chunk)
            add("scan", toeplitz_scan(s, kern, state, channels).scaled(passes), steps=passes * s.nq)
        return out
    raise KeyError(f"no cost formulas for the {fam} family")


def sdpa_supported(spec: M.MixSpec, s: MixShapes) -> bool:
    """scaled_dot_product_attention takes a dense or causal mask and a plain dot score."""
    score = spec.score
    if not isinstance(score, M.Dot) or score.bias is not None or score.cap is not None:
        return False
    kinds = [t for t in M.conjuncts(spec.mask) if not isinstance(t, M.Full)]
    if not kinds:
        return True
    if not (s.nq == s.nk or sympy.simplify(s.nq - s.nk) == 0):
        return False
    return len(kinds) == 1 and isinstance(kinds[0], M.Causal) and kinds[0].offset == 0


def _sdpa_pairs(spec, s: MixShapes, block):
    causal = any(isinstance(t, M.Causal) for t in M.conjuncts(spec.mask))
    tq = s.nq / block
    tiles = tq * (tq + 1) / 2 if causal else tq * (s.nk / block)
    pairs = s.nq * (s.nq + 1) / 2 if causal else s.nq * s.nk
    return pairs, tiles


