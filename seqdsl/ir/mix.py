"""The unified token-mixing template (SPEC §1): Y = M(X) · V, with M described by parts.

A MIX node of the IR carries one :class:`MixSpec`. Tensors that the structure uses
(a data-dependent decay, bucket ids, an explicit score or convolution kernel, the
parameters of an SSM kernel generator) are inputs of the node; the spec names them
through :class:`Ref` by their input role. Everything here is frozen and hashable, so
later stages (cost model, algorithm choice, kernel generation) reason on structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy


@dataclass(frozen=True)
class Ref:
    """A tensor input of the MIX node, by role (e.g. ``"decay"``, ``"kernel.C_re"``)."""

    role: str

    def __str__(self) -> str:
        return f"%{self.role}"


Scalar = sympy.Expr
Rate = Scalar | Ref


# ---- scores -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dot:
    """score_ij = scale · <q_i, k_j> (+ bias_ij), optionally soft-capped: cap·tanh(s/cap)."""

    scale: Scalar
    bias: Bias | None = None
    cap: Scalar | None = None

    def __str__(self) -> str:
        parts = [f"scale={self.scale}"]
        if self.bias is not None:
            parts.append(f"bias={self.bias}")
        if self.cap is not None:
            parts.append(f"cap={self.cap}")
        return f"dot({', '.join(parts)})"


@dataclass(frozen=True)
class Bias:
    """A positional bias added to the scores: ``alibi`` (slope_h·(j−i), ``table`` holds the
    slopes [H] if given) or ``relative`` (``table`` [H, buckets]: a learned scalar per head
    and clipped distance)."""

    kind: str
    table: Ref | None = None
    buckets: Scalar | None = None

    def __str__(self) -> str:
        return self.kind if self.table is None else f"{self.kind}({self.table})"


@dataclass(frozen=True)
class Given:
    """The scores are a tensor [.., Nq, Nk] given directly (Synthesizer)."""

    scores: Ref

    def __str__(self) -> str:
        return f"given({self.scores})"


Score = Dot | Given


# ---- feature maps (kernel / linear attention) -------------------------------------


@dataclass(frozen=True)
class Feature:
    """φ applied to queries and keys. kinds: identity, elu1, relu, exp, favor (positive
    random features, ``features`` of them, a fixed projection), spectral (learned
    frequencies, cos/sin features), spectral_pm (frequencies Σᵀε ± μ of a learned Gaussian:
    ``projection`` is then the noise ε [Dk, m], ``mean`` μ and ``scale`` Σ, ε redrawn per
    ``redraw``: never | training | always; codegen.linear.features.gaussian_frequencies)."""

    kind: str
    features: Scalar | None = None
    projection: Ref | None = None
    mean: Ref | None = None
    scale: Ref | None = None
    redraw: str = "never"

    def __str__(self) -> str:
        if self.features is None:
            return self.kind
        return f"{self.kind}(m={self.features})"


# ---- kernel generators for Toeplitz mixing ----------------------------------------


@dataclass(frozen=True)
class SSMKernel:
    """K_l = C · Ā^l · B̄ for a state-space model. kind: shift | diag | dplr | ema.

    ``params`` maps parameter names (log_dt, A_re, A_im, B, C_re, C_im, P, alpha, delta …)
    to the node inputs that hold them. ``mimo`` means one state shared across channels (S5).
    """

    kind: str
    state: Scalar
    init: str
    disc: str
    params: tuple[tuple[str, Ref], ...]
    mimo: bool = False
    conj: bool = True
    reverse: tuple[tuple[str, Ref], ...] = ()   # the backward direction's parameters
    groups: Scalar | None = None   # (Λ, P, B) shared by channel groups: channel c uses set c mod groups
    a_real: str = "negative"       # Re A = −exp(log_A_real) ("negative") or a free A_real ("free", DSS)
    dt_split: bool = False         # separate Δ for the real and imaginary parts of A (DSS)
    dt_range: tuple[Scalar, Scalar] | None = None   # (dt_min, dt_max) of Δ's log-uniform init
    blocks: int | None = None      # Λ initialised block-diagonally: `blocks` copies of a smaller HiPPO (S5)

    def __str__(self) -> str:
        extra = ", mimo" if self.mimo else ""
        if self.blocks is not None:
            extra += f", blocks={self.blocks}"
        if self.groups is not None:
            extra += f", groups={self.groups}"
        if self.a_real != "negative":
            extra += f", a_real={self.a_real}"
        if self.dt_split:
            extra += ", dt_split"
        return f"ssm({self.kind}, state={self.state}, init={self.init}, disc={self.disc}{extra})"


@dataclass(frozen=True)
class ExplicitKernel:
    """A convolution kernel given as a tensor [L, C]: L taps for C channels (implicit
    filters, long convolutions)."""

    kernel: Ref

    def __str__(self) -> str:
        return f"kernel({self.kernel})"


KernelGen = SSMKernel | ExplicitKernel


# ---- masks: a small algebra over (i, j) -------------------------------------------


@dataclass(frozen=True)
class Full:
    def __str__(self) -> str:
        return "full()"


@dataclass(frozen=True)
class Causal:
    """j ≤ i + offset (offset > 0 when queries are the last positions of the keys)."""

    offset: Scalar = sympy.Integer(0)

    def __str__(self) -> str:
        return "causal()" if self.offset == 0 else f"causal(offset={self.offset})"


@dataclass(frozen=True)
class Window:
    """|i − j| < size (two-sided band; ``causal() & window(W)`` keeps i−W < j ≤ i). With
    ``block`` = b > 1 the band is over blocks: |⌊i/b⌋ − ⌊j/b⌋| < size (BigBird's window of
    neighbouring blocks)."""

    size: Scalar
    block: Scalar = sympy.Integer(1)

    def __str__(self) -> str:
        return f"window({self.size})" if self.block == 1 else f"window({self.size}, block={self.block})"


@dataclass(frozen=True)
class Local:
    """Same block: ⌊i/size⌋ = ⌊j/size⌋."""

    size: Scalar

    def __str__(self) -> str:
        return f"local({self.size})"


@dataclass(frozen=True)
class Strided:
    """(i − j) mod stride = 0."""

    stride: Scalar

    def __str__(self) -> str:
        return f"strided({self.stride})"


@dataclass(frozen=True)
class Global:
    """Global tokens: i < count or j < count."""

    count: Scalar

    def __str__(self) -> str:
        return f"global_tokens({self.count})"


@dataclass(frozen=True)
class RandomBlocks:
    """Each query block sees ``count`` key blocks drawn with a fixed seed."""

    count: Scalar
    block: Scalar
    seed: int = 0
    per_head: bool = False     # a different draw for every head (stream (seed, head index))
    exclude: object = None     # a mask: key blocks it touches are never drawn (BigBird)

    def __str__(self) -> str:
        extra = (", per_head" if self.per_head else "") + (f", exclude={self.exclude}" if self.exclude else "")
        return f"random_blocks({self.count}, block={self.block}, seed={self.seed}{extra})"


@dataclass(frozen=True)
class Buckets:
    """Content-based: ids_i == ids_j, with ids a data-dependent integer tensor."""

    ids: Ref

    def __str__(self) -> str:
        return f"buckets({self.ids})"


@dataclass(frozen=True)
class KeyRange:
    """Keys start ≤ j < stop are seen by every query (memory slots, summary keys)."""

    start: Scalar
    stop: Scalar | None = None

    def __str__(self) -> str:
        return f"key_range({self.start}, {self.stop})" if self.stop is not None else f"key_range({self.start})"


@dataclass(frozen=True)
class QueryRange:
    """Queries start ≤ i < stop see every key (global rows away from the start: BigBird's last
    block); the mirror of KeyRange."""

    start: Scalar
    stop: Scalar | None = None

    def __str__(self) -> str:
        return f"query_range({self.start}, {self.stop})" if self.stop is not None else f"query_range({self.start})"


@dataclass(frozen=True)
class Butterfly:
    """Flat block butterfly (Pixelated Butterfly): cell a sees cell b when a XOR b is 0 or a
    power of two below 2^factors (any power when None); the cells are the ``block``-sized blocks,
    or, with ``size``, the cells of a size × size butterfly stretched over the matrix and rounded
    up to whole blocks (``seqdsl.analysis.butterfly``)."""

    block: Scalar
    factors: int | None = None
    size: int | None = None

    def __str__(self) -> str:
        extra = "".join(f", {k} = {v}" for k, v in (("factors", self.factors), ("size", self.size)) if v is not None)
        return f"butterfly({self.block}{extra})"


@dataclass(frozen=True)
class Document:
    """Packed rows: ids_i == ids_j, with ids [.., N] the document of every position (the
    ``cu_seqlens`` of FlashAttention as a mask). In softmax mixers a mask term; every mixer
    whose sequence axis is a model's packed axis also gets it from the call's ``doc_ids``
    (``codegen/varlen.py``), as a mask term or as state resets."""

    ids: Ref
    length: Scalar | None = None      # the typical document length (cost analysis only)

    def __str__(self) -> str:
        return f"document({self.ids})" if self.length is None else f"document({self.ids}, length={self.length})"


@dataclass(frozen=True)
class BlockMap:
    """Query block b sees key block ids[b] (Sinkhorn-sorted blocks); ids are data."""

    ids: Ref
    block: Scalar

    def __str__(self) -> str:
        return f"block_map({self.ids}, block={self.block})"


@dataclass(frozen=True)
class Decay:
    """A 1-semiseparable weight: L_ij = Π_{t=j+1..i} a_t (i ≥ j). ``rate`` is a scalar or a
    per-head constant (RetNet) or a data-dependent tensor (GLA, Mamba); ``log`` says the
    rate is given as log a_t."""

    rate: Rate
    log: bool = False
    granularity: str = "scalar"   # scalar | head | token | channel (a gate per key dim)

    def __str__(self) -> str:
        return f"decay({'log=' if self.log else ''}{self.rate}, {self.granularity})"


@dataclass(frozen=True)
class Toeplitz:
    """M_ij = K[i − j] for j ≤ i (causal). Bidirectional (``causal=False``): also
    M_ij = K'[j − i] for j > i (see ``diagonal``), with K' generated by the kernel's
    ``reverse`` parameters (an SSM run backwards in time; as released, S4/S4D/DSS/DLR/S5 share
    Λ, B, Δ and P with the forward one and have their own C, Mega's EMA has its own of all)
    or, for an explicit kernel, the same taps mirrored."""

    kernel: KernelGen
    causal: bool = True
    # bidirectional only: how the backward direction meets the diagonal — "once" (its tap 0
    # left out), "shift" (S4's: M_ij = K'[j − i − 1] for j > i) or "twice" (S5's: both
    # directions read u_i)
    diagonal: str = "once"

    def __str__(self) -> str:
        extra = "" if self.causal else ", causal=false" + ("" if self.diagonal == "once" else f", diagonal={self.diagonal}")
        return f"toeplitz({self.kernel}{extra})"


@dataclass(frozen=True)
class And:
    left: Mask
    right: Mask

    def __str__(self) -> str:
        return f"({self.left} & {self.right})"


@dataclass(frozen=True)
class Or:
    left: Mask
    right: Mask

    def __str__(self) -> str:
        return f"({self.left} | {self.right})"


Mask = (Full | Causal | Window | Local | Strided | Global | RandomBlocks | KeyRange | QueryRange | Butterfly | Buckets
        | Document | BlockMap | Decay | Toeplitz | And | Or)

BOOLEAN_MASKS = (Full, Causal, Window, Local, Strided, Global, RandomBlocks, KeyRange, QueryRange, Butterfly, Buckets,
                 Document, BlockMap)
STATIC_MASKS = (Full, Causal, Window, Local, Strided, Global, RandomBlocks, KeyRange, QueryRange, Butterfly)


def mask_leaves(m: Mask) -> list[Mask]:
    if isinstance(m, (And, Or)):
        return mask_leaves(m.left) + mask_leaves(m.right)
    return [m]


def conjuncts(m: Mask) -> list[Mask]:
    """The terms of a top-level intersection."""
    if isinstance(m, And):
        return conjuncts(m.left) + conjuncts(m.right)
    return [m]


# ---- the whole template -----------------------------------------------------------

NORMS = ("softmax", "none", "sum")

# The algorithms that each family admits (SPEC §1); the cost model chooses among them.
ALGORITHMS = {
    "softmax": ("materialized", "tiled", "sdpa"),
    "content_sparse": ("materialized", "tiled"),
    "synthetic": ("materialized",),
    "linear": ("quadratic", "recurrent", "chunked"),
    "decayed_linear": ("quadratic", "recurrent", "chunked"),
    "toeplitz": ("direct", "fft", "chunked_fft", "scan"),
}


@dataclass(frozen=True)
class MixSpec:
    """One token mixer: Y = M · V with M = norm(mask ∘ score(φ(Q), φ(K)))."""

    score: Score | None
    feature: Feature | None
    mask: Mask
    norm: str
    hints: tuple[tuple[str, object], ...] = field(default=())

    @property
    def family(self) -> str:
        """The family of SPEC §1 that decides which algorithms apply."""
        leaves = mask_leaves(self.mask)
        if any(isinstance(x, Toeplitz) for x in leaves):
            return "toeplitz"
        if isinstance(self.score, Given):
            return "synthetic"
        if self.norm == "softmax":
            if any(isinstance(x, (Buckets, BlockMap)) for x in leaves):
                return "content_sparse"
            return "softmax"
        if any(isinstance(x, Decay) for x in leaves):
            return "decayed_linear"
        return "linear"

    @property
    def causal(self) -> bool:
        return any(isinstance(x, (Causal, Decay)) for x in conjuncts(self.mask)) or any(
            isinstance(x, Toeplitz) and x.kernel is not None and x.causal for x in conjuncts(self.mask)
        )

    def hint(self, name: str, default: object = None) -> object:
        return dict(self.hints).get(name, default)

    def __str__(self) -> str:
        parts = []
        if self.score is not None:
            parts.append(f"score={self.score}")
        if self.feature is not None:
            parts.append(f"feature={self.feature}")
        parts.append(f"mask={self.mask}")
        parts.append(f"norm={self.norm}")
        parts += [f"{k}={v}" for k, v in self.hints]
        return f"{self.family}: " + ", ".join(parts)
