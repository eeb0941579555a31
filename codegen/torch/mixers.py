"""Lowering of MIX nodes: the call to the family runtime, with the structure spelled out.

A softmax mixer becomes ``softmax_attention(q, k, v, M.And(M.Causal(0), M.Window(256)),
scale=0.125, algorithm='tiled', block=64)``; a linear one ``linear_attention(...,
feature='elu1', norm='sum', decay=..., algorithm='chunked', chunk=64)``; a Toeplitz one
``toeplitz_mix(v, kind='diag', params={...}, algorithm='fft')``.
"""

from __future__ import annotations

from seqdsl.ir import mix as M
from seqdsl.ir.graph import Node


def supports(node: Node) -> tuple[bool, str]:
    """The torch backend lowers every family of the template."""
    return True, "every mixer family has a PyTorch runtime"


def _tensor(w, n: Node, ref: M.Ref | None) -> str:
    return "None" if ref is None else w.ref(n.input(ref.role))


def mask_source(w, mask, tensors: dict[str, str]) -> str:
    """Constructor calls of codegen.masks for a mask of the IR (sizes bound at call time
    enter as expressions of the dims read from the inputs)."""
    num = w.sizes.code
    match mask:
        case M.Full():
            return "M.Full()"
        case M.Causal(offset=o):
            return f"M.Causal({num(o)})"
        case M.Window(size=s, block=b):
            return f"M.Window({num(s)}, block={num(b)})"
        case M.Local(size=s):
            return f"M.Local({num(s)})"
        case M.Strided(stride=s):
            return f"M.Strided({num(s)})"
        case M.Global(count=c):
            return f"M.Global({num(c)})"
        case M.RandomBlocks(count=c, block=b, seed=seed, per_head=ph, exclude=ex):
            extra = "" if ex is None else f", exclude={mask_source(w, ex, tensors)}"
            return f"M.RandomBlocks({num(c)}, block={num(b)}, seed={int(seed)}, per_head={bool(ph)}{extra})"
        case M.KeyRange(start=a, stop=b):
            return f"M.KeyRange({num(a)}, {None if b is None else num(b)})"
        case M.QueryRange(start=a, stop=b):
            return f"M.QueryRange({num(a)}, {None if b is None else num(b)})"
        case M.Butterfly(block=b, factors=f, size=sz):
            extra = "".join(f", {k}={int(v)}" for k, v in (("factors", f), ("size", sz)) if v is not None)
            return f"M.Butterfly({num(b)}{extra})"
        case M.Buckets(ids=r):
            return f"M.Buckets({tensors[r.role]})"
        case M.BlockMap(ids=r, block=b):
            return f"M.BlockMap({tensors[r.role]}, block={num(b)})"
        case M.Document(ids=r):
            return f"M.Document({tensors[r.role]})"
        case M.And(left=a, right=b):
            return f"M.And({mask_source(w, a, tensors)}, {mask_source(w, b, tensors)})"
        case M.Or(left=a, right=b):
            return f"M.Or({mask_source(w, a, tensors)}, {mask_source(w, b, tensors)})"
    raise ValueError(f"{mask} is not a boolean mask")


def call(w, n: Node, choice) -> str:
    """The call of the family runtime; ``choice`` is the emitter's Choice (one algorithm, or
    a choice by a length read at call time)."""
    spec = n.spec
    roles = {p.role: w.ref(p) for p in n.inputs if p.node not in w.dropped}
    fam = spec.family
    algorithm = Algorithm(w.algorithm_code(choice),
                          {a for _, a in choice.by_length[1]} if choice.by_length else {choice.algorithm})
    if fam in ("softmax", "content_sparse", "synthetic"):
        return _softmax(w, n, spec, roles, algorithm)
    if fam in ("linear", "decayed_linear"):
        return _linear(w, n, spec, roles, algorithm)
    return _toeplitz(w, n, spec, roles, algorithm)


class Algorithm:
    """The ``algorithm=`` argument's source and the algorithms it may name at run time."""

    def __init__(self, code: str, possible: set[str]):
        self.code, self.possible = code, possible

    def __contains__(self, name: str) -> bool:
        return name in self.possible


def _structural(mask) -> M.Mask:
    """The boolean part of a softmax mask (decays and kernels never reach softmax)."""
    return mask


def _softmax(w, n, spec: M.MixSpec, roles, algorithm) -> str:
    mask = mask_source(w, _structural(spec.mask), roles)
    if isinstance(spec.score, M.Given):
        return f"given_attention({roles[spec.score.scores.role]}, {roles['v']}, {mask})"
    score = spec.score
    args = [roles["q"], roles["k"], roles["v"], mask, f"scale={w.sizes.scalar(score.scale)}"]
    if score.bias is not None:
        table = "None" if score.bias.table is None else roles[score.bias.table.role]
        args.append(f"bias=({score.bias.kind!r}, {table})")
    if score.cap is not None:
        args.append(f"cap={w.sizes.scalar(score.cap)}")
    args.append(f"algorithm={algorithm.code}")
    if "tiled" in algorithm:
        args.append(f"block={int(w.sizes.number(spec.hint('block') or 64))}")
    return f"softmax_attention({', '.join(args)})"


def _linear(w, n, spec: M.MixSpec, roles, algorithm) -> str:
    args = [roles["q"], roles["k"], roles["v"]]
    f = spec.feature
    if f is not None:
        args.append(f"feature={f.kind!r}")
        if f.projection is not None:
            args.append(f"projection={projection_source(f, roles.__getitem__)}")
    args.append(f"norm={spec.norm!r}")
    args.append(f"causal={spec.causal}")
    decay = next((x for x in M.mask_leaves(spec.mask) if isinstance(x, M.Decay)), None)
    fold = w.folds.get(n.id)
    if fold is not None and "gate_rate" in fold.args:       # Mamba's Δ ⊗ A, never materialised
        rate, channel = w.ref(fold.args["gate_rate"]), w.ref(fold.args["gate_channel"])
        args.append(f"decay=OuterGate({rate}[..., 0], {channel}[..., 0, :])")
        args.append("log_decay=True")
    elif decay is not None:
        rate = roles[decay.rate.role] if isinstance(decay.rate, M.Ref) else w.sizes.scalar(decay.rate)
        args.append(f"decay={rate}")
        args.append(f"log_decay={decay.log}")
    scale = spec.score.scale if isinstance(spec.score, M.Dot) else 1
    args.append(f"scale={w.sizes.scalar(scale)}")
    args += _document_ids(spec, roles)
    args.append(f"algorithm={algorithm.code}")
    if "chunked" in algorithm:
        args.append(f"chunk={int(w.sizes.number(spec.hint('chunk') or 64))}")
    return f"linear_attention({', '.join(args)})"


def projection_source(f: M.Feature, ref) -> str:
    """The projection argument of a feature map: the learned or fixed tensor, or the frequencies
    of a learned Gaussian drawn at the call (``codegen.linear.features.gaussian_frequencies``,
    reached as ``rt.gaussian_frequencies``); ``ref(role)`` names a mix input."""
    if f.mean is None:
        return ref(f.projection.role)
    return (f"rt.gaussian_frequencies({ref(f.mean.role)}, {ref(f.scale.role)}, {ref(f.projection.role)}, "
            f"redraw={f.redraw!r}, training=self.training)")


def _toeplitz(w, n, spec: M.MixSpec, roles, algorithm) -> str:
    t = next(x for x in M.mask_leaves(spec.mask) if isinstance(x, M.Toeplitz))
    k = t.kernel
    args = [roles["v"]]
    if isinstance(k, M.ExplicitKernel):
        args.append(f"explicit_kernel={roles[k.kernel.role]}")
        args.append("kind=None, params=None, disc=None, conj=True, mimo=False")
    else:
        params = ", ".join(f"{name!r}: {roles[ref.role]}" for name, ref in k.params)
        args.append(f"kind={k.kind!r}")
        args.append(f"params={{{params}}}")
        if k.reverse:
            rev = ", ".join(f"{name!r}: {roles[ref.role]}" for name, ref in k.reverse)
            args.append(f"reverse_params={{{rev}}}")
        args.append(f"disc={k.disc!r}, conj={k.conj}, mimo={k.mimo}")
        if k.disc == "dss":    # DSS normalises its kernel over the declared length, also when streaming
            args.append(f"kernel_length={w.sizes.code(w.g.type_of(n.input('v')).shape[-2])}")
    args.append(f"causal={t.causal}")
    args += _document_ids(spec, roles)
    if t.diagonal != "once":
        args.append(f"diagonal={t.diagonal!r}")
    args.append(f"algorithm={algorithm.code}")
    if "chunked_fft" in algorithm:
        args.append(f"chunk={int(w.sizes.number(spec.hint('chunk') or 4096))}")
    return f"toeplitz_mix({', '.join(args)})"


def _document_ids(spec: M.MixSpec, roles) -> list[str]:
    """``doc_ids=`` for a ``document(ids)`` term of a linear or Toeplitz mixer's mask (state
    resets); any other boolean term there is not honoured by those families."""
    docs = [x for x in M.mask_leaves(spec.mask) if isinstance(x, M.Document)]
    if not docs:
        return []
    others = [x for x in M.conjuncts(spec.mask) if isinstance(x, M.BOOLEAN_MASKS)
              and not isinstance(x, (M.Document, M.Causal, M.Full))]
    if len(docs) > 1 or others or isinstance(spec.mask, M.Or):
        raise ValueError(f"a {spec.family} mixer takes document(ids) as one term of an intersection with "
                         f"causal() / decay / toeplitz, not {spec.mask}")
    return [f"doc_ids={roles[docs[0].ids.role]}"]


def ssm_init_factory():
    """``init(kind, init, name, shape, generator)`` for the weights of SSM kernels."""
    from codegen.toeplitz.kernels import init_ssm_params

    def init(kind: str, init_name: str, name: str, shape: tuple, generator=None,
             dt: tuple[float, float] | None = None):
        return init_ssm_params(kind, init_name, {name: tuple(shape)}, generator, dt_range=dt)[name]

    return init
