"""The primitives of the language: one registry, each entry a signature and a shape rule.

Structure builtins (masks, scores, feature maps, kernel generators, inits) make no
node: they return a :class:`Struct` that ``mix`` assembles into a :class:`MixSpec`.
Tensor builtins make one IR node each and compute its output type. ``docs/language.md``
lists them; ``seqdsl builtins`` prints this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy

from seqdsl.check.signature import Builtin, P, bind
from seqdsl.check.values import Init, Scalar, Struct, Tensor, Word, describe
from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import printer
from seqdsl.ir import mix as M
from seqdsl.ir.graph import OpKind
from seqdsl.ir.types import TensorType, same_dim

REGISTRY: dict[str, Builtin] = {}


def builtin(group: str, *params: P):
    def deco(fn):
        name = fn.__name__.rstrip("_")
        if name in REGISTRY:
            raise AssertionError(f"builtin {name} registered twice")
        REGISTRY[name] = Builtin(name, tuple(params), fn, (fn.__doc__ or "").strip(), group)
        return fn
    return deco


@dataclass
class Ctx:
    """What a builtin sees: the elaborator, the calling frame, the call's position and
    the name its node will have (the assigned variable, else the builtin's name)."""

    el: Any
    frame: Any
    pos: Pos
    hint: str
    _inst: str | None = None

    @property
    def inst(self) -> str:
        if self._inst is None:
            self._inst = self.el.instance(self.frame, self.hint)
        return self._inst

    def node(self, kind: OpKind, inputs: list[tuple[str, Tensor]], outs, attrs: dict | None = None):
        return self.el.node(kind, self.frame, self.inst, inputs, outs, self.pos, attrs)

    def param(self, name: str, shape: tuple, init: Init) -> Tensor:
        return self.el.param(self.frame, f"{self.inst}.{name}", shape, init, self.pos, init.trainable)

    def error(self, msg: str, hint: str | None = None) -> SeqError:
        return SeqError(msg, self.pos, hint=hint)


def call_builtin(el, frame, name: str, args: list, kwargs: dict, e, hint: str | None) -> Any:
    b = REGISTRY[name]
    bound = bind(el, b, args, kwargs, e.pos)
    return b.fn(Ctx(el, frame, e.pos, hint or name), **bound)


def _float(shape) -> TensorType:
    return TensorType(tuple(shape), "float")


def _axis(ctx: Ctx, t: Tensor, axis: int) -> int:
    r = t.type.rank
    if not -r <= axis < r:
        raise ctx.error(f"axis {axis} is out of range for a tensor of rank {r} {t.type}")
    return axis % r


def _need_float(ctx: Ctx, t: Tensor, what: str) -> None:
    if t.type.dtype != "float":
        raise ctx.error(f"{what} needs a float tensor, got {t.type}",
                        hint="token ids must go through embed() first")


# ======================================================================================
# Initialisations
# ======================================================================================

def default_init() -> Init:
    return Init("normal", (sympy.Rational(2, 100),))


def constant_init(v: Scalar) -> Init:
    return Init("constant", (v.expr,))


def as_init(v: Any, pos: Pos) -> Init:
    if isinstance(v, Struct) and v.what == "init":
        return v.obj
    if isinstance(v, Scalar):
        return constant_init(v)
    raise SeqError(f"a parameter's initial value must be an init such as normal(0.02), got {describe(v)}", pos)


def _init(kind: str, *args, trainable: bool = True) -> Struct:
    return Struct("init", Init(kind, tuple(sympy.sympify(a) for a in args), trainable))


@builtin("init", P("std", "scalar", sympy.Rational(2, 100)), P("trainable", "bool", True))
def normal(ctx, std, trainable):
    """Gaussian initial values with standard deviation ``std``."""
    return _init("normal", std, trainable=trainable)


@builtin("init", P("std", "scalar", sympy.Rational(2, 100)), P("trainable", "bool", True))
def truncated_normal(ctx, std, trainable):
    """Gaussian with standard deviation parameter ``std``, values beyond ±2·std redrawn
    (TensorFlow's truncated_normal, mesh-tensorflow's and T5's initialisers)."""
    return _init("truncated_normal", std, trainable=trainable)


@builtin("init", P("low", "scalar"), P("high", "scalar"), P("trainable", "bool", True))
def uniform(ctx, low, high, trainable):
    """Uniform initial values in [low, high)."""
    return _init("uniform", low, high, trainable=trainable)


@builtin("init", P("trainable", "bool", True))
def zeros(ctx, trainable):
    """All zeros."""
    return _init("zeros", trainable=trainable)


@builtin("init", P("trainable", "bool", True))
def ones(ctx, trainable):
    """All ones."""
    return _init("ones", trainable=trainable)


@builtin("init", P("value", "scalar"), P("trainable", "bool", True))
def constant(ctx, value, trainable):
    """Every entry equal to ``value``."""
    return _init("constant", value, trainable=trainable)


@builtin("init", P("scale", "scalar", 1), P("trainable", "bool", True))
def orthogonal(ctx, scale, trainable):
    """A (semi-)orthogonal matrix times ``scale``."""
    return _init("orthogonal", scale, trainable=trainable)


# ======================================================================================
# Masks: the algebra of M's support (combine with & and |)
# ======================================================================================

def _mask(obj, tensors=(), pending=()) -> Struct:
    return Struct("mask", obj, tuple(tensors), tuple(pending))


@builtin("mask")
def full(ctx):
    """Every query sees every key."""
    return _mask(M.Full())


@builtin("mask", P("offset", "scalar", 0))
def causal(ctx, offset):
    """Query i sees keys j ≤ i + offset."""
    return _mask(M.Causal(sympy.sympify(offset)))


@builtin("mask", P("size", "dim"), P("block", "dim", 1))
def window(ctx, size, block):
    """|i − j| < size. With causal(): the last ``size`` keys up to i. With ``block`` = b the
    band counts blocks: query block r sees key blocks r − size < c < r + size."""
    return _mask(M.Window(size, sympy.sympify(block)))


@builtin("mask", P("size", "dim"))
def local(ctx, size):
    """Block-local: i and j in the same block of ``size``."""
    return _mask(M.Local(size))


@builtin("mask", P("stride", "dim"))
def strided(ctx, stride):
    """(i − j) divisible by ``stride`` (Sparse Transformer's strided pattern)."""
    return _mask(M.Strided(stride))


@builtin("mask", P("count", "dim"))
def global_tokens(ctx, count):
    """The first ``count`` positions see and are seen by all (Longformer, BigBird)."""
    return _mask(M.Global(count))


@builtin("mask", P("count", "dim"), P("block", "dim"), P("seed", "int", 0), P("per_head", "bool", False),
         P("exclude", "mask", None))
def random_blocks(ctx, count, block, seed, per_head, exclude):
    """Each query block sees ``count`` key blocks drawn at compile time with ``seed`` (BigBird);
    ``per_head`` draws again for every head, from the stream (seed, head): distinct seeds never
    repeat another's heads. ``exclude``: a fixed mask whose blocks are never drawn (BigBird
    draws outside its window and global blocks); a row with fewer free blocks draws them all."""
    if exclude is not None:
        for leaf in M.mask_leaves(exclude.obj):
            if isinstance(leaf, (M.Buckets, M.BlockMap, M.Document, M.Decay, M.Toeplitz)):
                raise ctx.error(f"random_blocks(): exclude must be a fixed pattern, not {leaf}")
    return _mask(M.RandomBlocks(count, block, seed, per_head, None if exclude is None else exclude.obj))


@builtin("mask", P("start", "scalar"), P("stop", "scalar", None))
def key_range(ctx, start, stop):
    """Keys start ≤ j < stop (to the end if no stop) are seen by every query."""
    return _mask(M.KeyRange(sympy.sympify(start), None if stop is None else sympy.sympify(stop)))


@builtin("mask", P("start", "scalar"), P("stop", "scalar", None))
def query_range(ctx, start, stop):
    """Queries start ≤ i < stop see every key (to the end if no stop): global rows anywhere,
    with key_range for the columns (BigBird's last block: key_range(N − b) | query_range(N − b))."""
    return _mask(M.QueryRange(sympy.sympify(start), None if stop is None else sympy.sympify(stop)))


@builtin("mask", P("block", "dim"), P("factors", "int", None), P("size", "int", None))
def butterfly(ctx, block, factors, size):
    """Flat block butterfly: block a sees block b when a XOR b is 0 or a power of two below
    2^factors (all powers by default). ``size = s`` (a weight's sparsity only) stretches an s × s
    butterfly over the matrix and keeps every block that its pattern touches, as Pixelated
    Butterfly's FlatBlockButterflySparsityConfig(butterfly_size = s, n_factors, block)."""
    if factors is not None and factors < 1:
        raise ctx.error(f"butterfly(): factors must be at least 1, got {factors}")
    if size is not None:
        if size < 2 or size & (size - 1):
            raise ctx.error(f"butterfly(): size must be a power of two (at least 2), got {size}")
        if factors is not None and factors > size.bit_length() - 1:
            raise ctx.error(f"butterfly(): a {size} × {size} butterfly has {size.bit_length() - 1} factors, "
                            f"not {factors}", hint=f"factors between 1 and log2(size) = {size.bit_length() - 1}")
    return _mask(M.Butterfly(block, factors, size))


@builtin("mask", P("ids", "tensor"))
def buckets(ctx, ids):
    """Content-based: i sees j when ids[i] == ids[j] (Reformer's hash buckets)."""
    if ids.type.dtype != "int":
        raise ctx.error(f"buckets() needs integer ids (e.g. from lsh()), got {ids.type}")
    role = ctx.el.new_role("ids")
    return _mask(M.Buckets(M.Ref(role)), [(role, ids)])


@builtin("mask", P("ids", "tensor"), P("length", "scalar", None))
def document(ctx, ids, length):
    """Packed rows: i sees j when both are in the same document, ids [.., N] the document of
    every position (a new document wherever the id changes). Softmax mixers skip the tiles
    across documents; linear, decayed and Toeplitz mixers reset their state and convolution
    history at every boundary. ``length``: the typical document length, for the cost
    analysis only (default: one document per row)."""
    if ids.type.dtype != "int":
        raise ctx.error(f"document() needs integer document ids [.., N], got {ids.type}")
    role = ctx.el.new_role("documents")
    return _mask(M.Document(M.Ref(role), None if length is None else sympy.sympify(length)), [(role, ids)])


@builtin("mask", P("rate", "any", None), P("log", "any", None))
def decay(ctx, rate, log):
    """A decay weight L_ij = Π_{t=j+1..i} a_t: give ``rate`` (a_t) or ``log`` (log a_t) — a
    number, a per-head tensor [H], or data-dependent [.., N] / [.., N, Dk] (gates)."""
    if (rate is None) == (log is None):
        raise ctx.error("decay() takes exactly one of rate= or log=")
    value = rate if rate is not None else log
    if isinstance(value, Scalar):
        return _mask(M.Decay(value.expr, log=log is not None))
    if isinstance(value, Tensor):
        _need_float(ctx, value, "decay()")
        role = ctx.el.new_role("decay")
        return _mask(M.Decay(M.Ref(role), log=log is not None), [(role, value)])
    if isinstance(value, Word):
        raise ctx.el.unknown_word(value)
    raise ctx.error(f"decay() needs a number or a tensor, got {describe(value)}")


TOEPLITZ_DIAGONAL = ("once", "shift", "twice")


@builtin("mask", P("kernel", "kernel"), P("causal", "bool", True), P("share", "bool", True),
         P("diagonal", "choice", "once", choices=TOEPLITZ_DIAGONAL))
def toeplitz(ctx, kernel, causal, share, diagonal):
    """M_ij = K[i − j]: a long convolution with the kernel from ssm(...) or kernel(K).

    Bidirectional (``causal = false``) adds M_ij = K'[j − i] for j > i, K' from a backward SSM
    that shares every parameter but C with the forward one (``share = true``, as the released
    S4, S4D, DSS, DLR and S5) or is a second SSM of its own (``share = false``, Mega's EMA).
    ``diagonal``: "once" (K' loses its tap 0), "shift" (S4's FFT layout: M_ij = K'[j − i − 1]),
    "twice" (S5's two scans: both directions read u_i). A causal convolution has no backward
    direction: there both are accepted and change nothing (so that an option can switch
    ``causal`` alone)."""
    if isinstance(kernel.obj, M.ExplicitKernel) and (diagonal != "once" or not share):
        raise ctx.error("an explicit kernel is mirrored (M_ij = K[|i − j|]); share and diagonal apply to "
                        "SSM kernels")
    pending = tuple(item + (share,) if item[0] == "ssm" else item for item in kernel.pending)
    return _mask(M.Toeplitz(kernel.obj, causal, diagonal), kernel.tensors, pending)


@builtin("mask", P("ids", "tensor"), P("block", "dim"))
def block_map(ctx, ids, block):
    """Query block b sees key block ids[b] (Sinkhorn-sorted blocks)."""
    if ids.type.dtype != "int":
        raise ctx.error(f"block_map() needs integer block ids, got {ids.type}")
    role = ctx.el.new_role("blocks")
    return _mask(M.BlockMap(M.Ref(role), block), [(role, ids)])


def combine_masks(el, op: str, a: Any, b: Any, pos: Pos, operands: tuple | None = None) -> Struct:
    """``a & b`` or ``a | b``; ``operands``, the two expressions, name them in messages as written."""
    for v in (a, b):
        if not (isinstance(v, Struct) and v.what == "mask"):
            raise SeqError(f"'{op}' combines masks, got {describe(v)}", pos,
                           hint="masks are made by causal(), window(W), local(B), decay(...), ...")
    obj = M.And(a.obj, b.obj) if op == "&" else M.Or(a.obj, b.obj)
    if op == "|":
        for side, written in zip((a, b), operands or (None, None)):
            if any(isinstance(leaf, (M.Decay, M.Toeplitz)) for leaf in M.mask_leaves(side.obj)):
                what = "a decay or convolution" if written is None else printer.expr(written)
                raise SeqError(f"'|' cannot combine {what}: a decay or convolution only multiplies (&)", pos)
    return Struct("mask", obj, a.tensors + b.tensors, a.pending + b.pending)


# ======================================================================================
# Scores, biases and feature maps
# ======================================================================================

@builtin("score", P("scale", "scalar", None), P("bias", "bias", None), P("cap", "scalar", None))
def dot(ctx, scale, bias, cap):
    """score = scale · q·k (+ bias), soft-capped to ±cap if given. Default scale: Dk^-½ for
    softmax, 1 otherwise."""
    return Struct("score", M.Dot(scale, None if bias is None else bias.obj, cap),
                  () if bias is None else bias.tensors, () if bias is None else bias.pending)


@builtin("score", P("scores", "tensor"))
def given(ctx, scores):
    """Scores given as a tensor [.., Nq, Nk] (Synthesizer)."""
    _need_float(ctx, scores, "given()")
    if scores.type.rank < 2:
        raise ctx.error(f"given() needs scores of rank ≥ 2 [.., Nq, Nk], got {scores.type}")
    role = ctx.el.new_role("scores")
    return Struct("score", M.Given(M.Ref(role)), ((role, scores),))


@builtin("bias", P("slopes", "tensor", None))
def alibi(ctx, slopes):
    """ALiBi: adds slope_h · (j − i); default slopes 2^(−8h/H)."""
    if slopes is None:
        return Struct("bias", M.Bias("alibi"))
    role = ctx.el.new_role("slopes")
    return Struct("bias", M.Bias("alibi", M.Ref(role)), ((role, slopes),))


@builtin("bias", P("heads", "dim"), P("buckets", "dim", 32), P("table", "tensor", None),
         P("max_distance", "dim", None), P("bidirectional", "bool", True))
def relative(ctx, heads, buckets, table, max_distance, bidirectional):
    """A learned bias per head and relative distance j − i, ``buckets`` of them: clipped at
    ±buckets/2; or, with ``max_distance``, T5's log buckets (half the buckets exact, the rest
    logarithmic up to max_distance; ``bidirectional``: half the table for keys after the
    query, as T5's encoder; false for a decoder). ``table`` [heads, buckets] shares one table
    between layers (T5 shares one per stack)."""
    if max_distance is None and not bidirectional:
        raise ctx.error("relative(): bidirectional = false needs max_distance (T5's log buckets)")
    kind = "relative"
    if max_distance is not None:
        n = ctx.el.concrete_int(buckets, ctx.pos, "relative(): buckets")
        dist = ctx.el.concrete_int(max_distance, ctx.pos, "relative(): max_distance")
        if n < (4 if bidirectional else 2) or dist <= n // (4 if bidirectional else 2):
            raise ctx.error(f"relative(): {n} buckets up to max_distance {dist} leave no log buckets")
        kind = f"t5:{dist}:{'bi' if bidirectional else 'uni'}"   # read by codegen.softmax.scores.t5_options
    if table is None:
        table = ctx.param("relative_bias", (heads, buckets), Init("zeros"))
    elif table.type.rank != 2 or not (same_dim(table.type.shape[0], heads) and same_dim(table.type.shape[1], buckets)):
        raise ctx.error(f"relative(): table must be [{heads}, {buckets}], got {table.type}")
    role = ctx.el.new_role("bias_table")
    return Struct("bias", M.Bias(kind, M.Ref(role), buckets), ((role, table),))


FEATURES = ("identity", "elu1", "relu", "exp")


def feature_named(el, v, pos: Pos) -> Struct:
    if v.name not in FEATURES:
        raise SeqError(f"unknown feature map {v.name!r}; expected one of {', '.join(FEATURES)}, "
                       "favor(m) or spectral(m)", pos)
    return Struct("feature", M.Feature(v.name))


@builtin("feature", P("features", "dim"), P("orthogonal", "bool", True), P("seed", "int", 0))
def favor(ctx, features, orthogonal, seed):
    """Performer's positive random features: φ(x) = exp(ωx − |x|²/2)/√m, m = ``features``."""
    return Struct("feature", M.Feature("favor", features), (),
                  (("favor", features, orthogonal, seed),))


@builtin("feature", P("features", "dim"), P("smoothing", "scalar", None),
         P("learn", "choice", "frequencies", choices=("frequencies", "gaussian")), P("heads", "dim", None),
         P("redraw", "choice", None, choices=("never", "training", "always")))
def spectral(ctx, features, smoothing, learn, heads, redraw):
    """Learned spectral kernel: φ(x) = [cos(Ωx), sin(Ωx)]/√m with learned frequencies Ω [m, Dk];
    ``smoothing = s`` appends the constant feature s (φ(q)·φ(k) + s², as the smoothed random
    Fourier features of On Learning the Transformer Kernel, s = 1). ``learn = gaussian``: GMM-RKS,
    m draws ε ~ N(0, I) give the frequencies Σᵀε ± μ (times Dk^−¼) of a learned mean μ and
    matrix Σ, φ = [cos, sin](Ω±)/√m (width 4m); ε is redrawn per ``redraw``: training (the
    default: every call in training mode, evaluation keeps the last draw), always (every call,
    the reference's default) or never. ``heads = H``: μ, Σ (or Ω) per head, the q/k head axis."""
    if learn == "frequencies" and redraw not in (None, "never"):
        raise ctx.error(f"spectral(): learned frequencies are not drawn, so redraw = {redraw} has nothing to "
                        "redraw", hint="learn = gaussian draws ε ~ N(0, I) and learns its mean and scale")
    base = "spectral" if learn == "frequencies" else "spectral_pm"
    kind = base if smoothing is None else f"{base}+{float(smoothing)!r}"   # codegen.linear.features
    feature = M.Feature(kind, features, redraw=redraw or ("training" if learn == "gaussian" else "never"))
    return Struct("feature", feature, (), (("spectral", features, learn, heads),))


# ======================================================================================
# Kernel generators (Toeplitz mixing)
# ======================================================================================

SSM_KINDS = ("shift", "diag", "dplr", "ema")
SSM_INITS = ("default", "s4d_lin", "s4d_inv", "s4d_real", "legs", "dss", "dlr", "random")
SSM_DISC = ("zoh", "bilinear", "dss", "none")
SSM_TENSORS = ("log_dt", "log_A_real", "A_real", "A_imag", "B_re", "B_im", "C_re", "C_im", "P_re", "P_im",
               "alpha", "delta", "beta")
SSM_A_REAL = ("negative", "free")


@builtin("kernel", P("kind", "choice", choices=SSM_KINDS), P("state", "dim", 64),
         P("init", "choice", "default", choices=SSM_INITS),
         P("disc", "choice", "zoh", choices=SSM_DISC), P("mimo", "bool", False),
         P("conj", "bool", True), P("groups", "dim", None, optional=True),
         P("dt_min", "scalar", None, optional=True), P("dt_max", "scalar", None, optional=True),
         P("a_real", "choice", "negative", choices=SSM_A_REAL), P("dt_split", "bool", False),
         P("blocks", "int", None), *[P(n, "tensor", None) for n in SSM_TENSORS])
def ssm(ctx, kind, state, init, disc, mimo, conj, groups, dt_min, dt_max, a_real, dt_split, blocks, **tensors):
    """A state-space kernel K_l = C Ā^l B̄ (shift, diagonal S4D/DSS/DLR, DPLR S4, Mega's EMA).
    Its parameters are created for the channels of the mix, or given as tensors.

    ``groups`` (S4's n_ssm): A (and DPLR's P and B) shared by channel groups, channel c using
    set c mod groups (default: one set per channel); ``dt_min``/``dt_max``: the range of Δ's
    log-uniform initialisation (default 1e-3, 1e-1); ``a_real = free``: Re A a free parameter
    A_real (DSS; default ``negative``, Re A = −exp(log_A_real)); ``dt_split``: separate Δ for
    the real and imaginary parts of A (DSS), log_dt [channels, 2]; ``blocks``: a diagonal Λ
    initialised block-diagonally, ``blocks`` copies of the HiPPO-LegS (or DSS) eigenvalues of
    a state S/blocks (S5's --blocks)."""
    if blocks is not None and (kind != "diag" or init not in ("legs", "dss") or blocks < 1):
        raise ctx.error(f"ssm(): blocks = {blocks} splits the HiPPO initialisation of a diagonal Λ into "
                        "copies", hint="kind = diag, init = legs (or dss), blocks ≥ 1")
    if kind in ("shift", "ema") and (groups is not None or a_real != "negative" or dt_split
                                     or dt_min is not None or dt_max is not None):
        raise ctx.error(f"groups, a_real, dt_split, dt_min and dt_max describe a diagonal or DPLR SSM; "
                        f"a {kind} SSM takes none of them")
    if mimo and (groups is not None or dt_split):
        raise ctx.error("a MIMO SSM (S5) has one A for all channels: groups and dt_split do not apply")
    if (dt_split or dt_min is not None or dt_max is not None) and disc == "none":
        raise ctx.error("disc = none has no step Δ: dt_min, dt_max and dt_split do not apply")
    if kind == "dplr" and (a_real != "negative" or dt_split):
        raise ctx.error("a_real = free and dt_split are DSS's parameterisation of a diagonal SSM (kind = diag)")
    if a_real == "free" and disc != "dss":
        raise ctx.error("a_real = free lets Re A grow positive, which only DSS's normalised kernel "
                        "(disc = dss) keeps bounded", hint="add disc = dss, or leave a_real out")
    if dt_split and disc not in ("dss", "zoh"):
        raise ctx.error("dt_split scales Re A and Im A by their own Δ: it applies to disc = dss or zoh, "
                        f"whose B̄ depends on Δ·A alone, not to disc = {disc}")
    dt_range = None
    if dt_min is not None or dt_max is not None:
        lo = sympy.sympify(dt_min) if dt_min is not None else sympy.Rational(1, 1000)
        hi = sympy.sympify(dt_max) if dt_max is not None else sympy.Rational(1, 10)
        if lo.is_number and hi.is_number and not (0 < lo <= hi):
            raise ctx.error(f"ssm(): need 0 < dt_min ≤ dt_max, got dt_min = {lo}, dt_max = {hi}")
        dt_range = (lo, hi)
    if init == "default":
        init = {"shift": "random", "diag": "s4d_lin", "dplr": "legs", "ema": "random"}[kind]
    given_ = {k: v for k, v in tensors.items() if v is not None}
    refs, pairs = [], []
    for k, v in given_.items():
        _need_float(ctx, v, f"ssm(): {k}")
        role = ctx.el.new_role(f"kernel.{k}.")
        refs.append((k, M.Ref(role)))
        pairs.append((role, v))
    if kind == "shift" and disc != "zoh":
        raise ctx.error("a shift SSM has no discretisation; leave disc out")
    if disc == "dss" and kind != "diag":
        raise ctx.error(f"disc = dss is DSS's normalisation of a diagonal kernel; a {kind} SSM takes zoh, "
                        "bilinear or none", hint="use kind = diag for DSS, or disc = zoh")
    if kind == "ema":
        disc = "none"   # Mega's damped EMA is defined in discrete time
    obj = M.SSMKernel(kind, state, init, disc if kind != "shift" else "none", tuple(refs), mimo, conj,
                      groups=groups, a_real=a_real, dt_split=dt_split, dt_range=dt_range, blocks=blocks)
    return Struct("kernel", obj, tuple(pairs), (("ssm", obj, ctx.pos),))


@builtin("kernel", P("K", "tensor"))
def kernel(ctx, K):
    """An explicit convolution kernel [L, C] (implicit filters: Hyena, long convolutions)."""
    _need_float(ctx, K, "kernel()")
    if K.type.rank != 2:
        raise ctx.error(f"kernel() needs a tensor [L, C] (length, channels), got {K.type}")
    role = ctx.el.new_role("kernel")
    return Struct("kernel", M.ExplicitKernel(M.Ref(role)), ((role, K),))


# The mix primitive and the tensor builtins live in their own modules, which register
# themselves into REGISTRY on import.
from seqdsl.check import builtins_higher as _higher  # noqa: E402,F401
from seqdsl.check import builtins_mix as _mix  # noqa: E402,F401
from seqdsl.check import builtins_tensor as _tensor  # noqa: E402,F401
from seqdsl.check.builtins_tensor import attribute, elementwise, index, matmul  # noqa: E402,F401
