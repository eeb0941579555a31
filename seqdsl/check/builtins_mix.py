"""``mix``: the token-mixing template. Checks the structure and the shapes, creates the
weights its parts need (SSM kernels, random features), and makes one MIX node."""

from __future__ import annotations

import dataclasses

import sympy

from seqdsl.check.builtins import REGISTRY, Ctx, builtin, full
from seqdsl.check.signature import P
from seqdsl.check.values import Init, Struct, Tensor
from seqdsl.errors import SeqError
from seqdsl.ir import mix as M
from seqdsl.ir.graph import OpKind
from seqdsl.ir.types import TensorType, broadcast, same_dim, show_dim

_ = REGISTRY  # the decorator registers into it

ALL_ALGORITHMS = tuple(sorted({a for algos in M.ALGORITHMS.values() for a in algos}))


@builtin("mix", P("q", "tensor", None), P("k", "tensor", None), P("v", "tensor"),
         P("score", "score", None), P("feature", "feature", None), P("mask", "mask", None),
         P("norm", "choice", None, choices=M.NORMS),
         P("algorithm", "choice", None, choices=ALL_ALGORITHMS), P("chunk", "dim", None),
         P("block", "dim", None), P("dtype", "choice", None, choices=("fp32", "fp16", "bf16")))
def mix(ctx: Ctx, q, k, v, score, feature, mask, norm, algorithm, chunk, block, dtype):
    """Y = M · V with M = norm(mask ∘ score(φ(q), φ(k))). q, k: [.., Nq, Dk], [.., Nk, Dk];
    v: [.., Nk, Dv]; result [.., Nq, Dv]. For a Toeplitz mask only v: [.., N, C]."""
    mask = mask or full(ctx)
    leaves = M.mask_leaves(mask.obj)
    toeplitz = [x for x in leaves if isinstance(x, M.Toeplitz)]
    decays = [x for x in leaves if isinstance(x, M.Decay)]
    for t in (q, k, v):
        if t is not None and t.type.dtype != "float":
            raise ctx.error(f"mix() needs float tensors, got {t.type}", hint="embed token ids first")
    if v.type.rank < 2:
        raise ctx.error(f"mix(): v must be [.., N, D], got {v.type}")
    if norm is None:
        norm = "softmax" if (q is not None and feature is None and not decays and not toeplitz) else "none"

    if toeplitz:
        if any(isinstance(x, M.Or) for x in _nodes(mask.obj)):
            raise ctx.error("toeplitz(...) cannot be combined with other masks (except '& document(ids)')")
        out_shape, batch = _toeplitz_shapes(ctx, q, k, v, score, feature, norm, leaves)
        n_q = v.type.shape[-2]
    elif isinstance(score.obj if score else None, M.Given):
        out_shape, batch, n_q = _given_shapes(ctx, q, k, v, score)
    else:
        out_shape, batch, n_q = _qk_shapes(ctx, q, k, v)
    d_k = q.type.shape[-1] if q is not None else None

    if norm == "softmax":
        if decays:
            raise ctx.error("decay() with norm=softmax is not supported: a decay multiplies linear "
                            "scores", hint="use norm=none (RetNet, GLA) or an ALiBi bias: dot(bias=alibi())")
        if feature is not None:
            raise ctx.error("a feature map with norm=softmax is not supported",
                            hint="feature maps define linear attention: use norm=sum or norm=none")
    elif not toeplitz and score is not None and isinstance(score.obj, M.Given):
        pass
    elif not toeplitz:
        for leaf in leaves:
            if not isinstance(leaf, (M.Full, M.Causal, M.Decay, M.Document)):
                raise ctx.error(f"mask {leaf} with norm={norm} is not supported: linear attention takes "
                                "full(), causal(), decay(...) and document(ids)",
                                hint="use norm=softmax for sparse masks")
        if any(isinstance(x, M.Or) for x in _nodes(mask.obj)):
            raise ctx.error("'|' of masks is only supported with norm=softmax")
        if decays and not any(isinstance(x, M.Causal) for x in M.conjuncts(mask.obj)):
            raise ctx.error("decay(...) needs causal(): the decay is defined for j ≤ i",
                            hint="write mask = causal() & decay(...)")
    if len(decays) > 1:
        raise ctx.error("only one decay(...) per mix")
    n_keys = v.type.shape[-2]
    for leaf in leaves:
        if isinstance(leaf, M.Butterfly) and leaf.size is not None:
            raise ctx.error(f"{leaf}: size stretches the butterfly over a weight's shape; an attention "
                            "pattern would change with the sequence length",
                            hint="in a mix use butterfly(block, factors = k); size is for linear(sparsity =)")
        if isinstance(leaf, M.RandomBlocks):
            ctx.el.require(sympy.Le(leaf.count * leaf.block, n_keys),
                           f"random_blocks({leaf.count}, block = {leaf.block}) draws more blocks than the "
                           f"{n_keys} keys hold", ctx.pos)


    if score is None and q is not None and not toeplitz:
        scale = d_k ** sympy.Rational(-1, 2) if norm == "softmax" else sympy.Integer(1)
        score = Struct("score", M.Dot(scale))
    elif score is not None and isinstance(score.obj, M.Dot) and score.obj.scale is None:
        scale = d_k ** sympy.Rational(-1, 2) if norm == "softmax" else sympy.Integer(1)
        score = Struct("score", dataclasses.replace(score.obj, scale=scale), score.tensors, score.pending)

    inputs: list[tuple[str, Tensor]] = [(r, t) for r, t in (("q", q), ("k", k), ("v", v)) if t is not None]
    parts = [s for s in (mask, score, feature) if s is not None]
    for s in parts:
        inputs += list(s.tensors)
    mask_obj = _resolve_decay(ctx, mask.obj, inputs, batch, n_q, d_k)
    feature_obj = feature.obj if feature is not None else None
    for s in parts:
        for item in s.pending:
            feature_obj, mask_obj = _create_pending(ctx, item, inputs, v, q, batch, feature_obj, mask_obj)

    if algorithm is not None:
        spec_family = M.MixSpec(score.obj if score else None, feature_obj, mask_obj, norm).family
        allowed = M.ALGORITHMS[spec_family]
        if algorithm not in allowed:
            raise ctx.error(f"algorithm {algorithm!r} does not apply to a {spec_family} mixer",
                            hint="choose one of " + ", ".join(allowed))
    hints = tuple((n, val) for n, val in (("algorithm", algorithm), ("chunk", chunk), ("block", block),
                                          ("dtype", dtype)) if val is not None)
    spec = M.MixSpec(score.obj if score else None, feature_obj, mask_obj, norm, hints)
    spec, inputs = _local_roles(spec, inputs)
    return ctx.node(OpKind.MIX, inputs, TensorType(out_shape), {"spec": spec})


def _local_roles(spec: M.MixSpec, inputs):
    """Rename the structure's roles from elaboration-wide ones (decay7) to names local to this
    node (decay, kernel.C_re), so that the IR reads the same wherever the mix sits."""
    mapping, used = {}, {"q", "k", "v"}
    for role, _t in inputs:
        if role in used:
            continue
        base = role.rstrip("0123456789").rstrip(".")
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        mapping[role] = name
    renamed = [(mapping.get(r, r), t) for r, t in inputs]
    return _rename(spec, mapping), renamed


def _rename(obj, mapping):
    if isinstance(obj, M.Ref):
        return M.Ref(mapping.get(obj.role, obj.role))
    if isinstance(obj, tuple):
        return tuple(_rename(x, mapping) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _rename(getattr(obj, f.name), mapping) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    return obj


def _nodes(m):
    out = [m]
    if isinstance(m, (M.And, M.Or)):
        out += _nodes(m.left) + _nodes(m.right)
    return out


def _qk_shapes(ctx: Ctx, q, k, v):
    if q is None or k is None:
        raise ctx.error("mix() needs q and k (or score=given(S), or a toeplitz(...) mask)")
    if q.type.rank < 2 or k.type.rank < 2:
        raise ctx.error(f"mix(): q and k must be [.., N, D], got {q.type} and {k.type}")
    if not same_dim(q.type.shape[-1], k.type.shape[-1]):
        raise ctx.error(f"mix(): q and k must have the same last dim, got {q.type} and {k.type}")
    if not same_dim(k.type.shape[-2], v.type.shape[-2]):
        raise ctx.error(f"mix(): k and v must have the same length, got {k.type} and {v.type} "
                        f"({show_dim(k.type.shape[-2])} vs {show_dim(v.type.shape[-2])})")
    batch = broadcast(q.type.shape[:-2], k.type.shape[:-2])
    batch = broadcast(batch, v.type.shape[:-2]) if batch is not None else None
    if batch is None:
        raise ctx.error(f"mix(): the leading dims of q {q.type}, k {k.type} and v {v.type} do not broadcast")
    n_q = q.type.shape[-2]
    return batch + (n_q, v.type.shape[-1]), batch, n_q


def _given_shapes(ctx: Ctx, q, k, v, score):
    if q is not None or k is not None:
        raise ctx.error("with score=given(S) the scores are given: leave q and k out")
    s_type = dict(score.tensors)[score.obj.scores.role].type
    if not same_dim(s_type.shape[-1], v.type.shape[-2]):
        raise ctx.error(f"mix(): given scores {s_type} must have as many keys as v has rows {v.type}")
    batch = broadcast(s_type.shape[:-2], v.type.shape[:-2])
    if batch is None:
        raise ctx.error(f"mix(): the leading dims of the scores {s_type} and v {v.type} do not broadcast")
    n_q = s_type.shape[-2]
    return batch + (n_q, v.type.shape[-1]), batch, n_q


def _toeplitz_shapes(ctx: Ctx, q, k, v, score, feature, norm, leaves):
    if q is not None or k is not None or score is not None or feature is not None:
        raise ctx.error("a toeplitz(...) mask mixes v alone: leave q, k, score and feature out",
                        hint="gate with elementwise products around the mix, as H3 does")
    if any(not isinstance(x, (M.Toeplitz, M.Document)) for x in leaves) or len(leaves) - sum(
            isinstance(x, M.Document) for x in leaves) != 1:
        raise ctx.error("toeplitz(...) cannot be combined with other masks (except '& document(ids)')")
    if norm != "none":
        raise ctx.error(f"norm={norm} does not apply to a convolution (toeplitz) mix")
    return v.type.shape, v.type.shape[:-2]


def _resolve_decay(ctx: Ctx, m, inputs, batch, n_q, d_k):
    """Record how fine-grained a decay is, from the shape of its rate."""
    if isinstance(m, (M.And, M.Or)):
        return type(m)(_resolve_decay(ctx, m.left, inputs, batch, n_q, d_k),
                       _resolve_decay(ctx, m.right, inputs, batch, n_q, d_k))
    if not isinstance(m, M.Decay) or not isinstance(m.rate, M.Ref):
        return m
    t = dict(inputs)[m.rate.role].type
    shape = t.shape
    if broadcast(shape, batch) == batch and (not shape or not same_dim(shape[-1], n_q)):
        gran = "head"
    elif shape and same_dim(shape[-1], n_q) and broadcast(shape, batch + (n_q,)) == batch + (n_q,):
        gran = "token"
    elif len(shape) >= 2 and same_dim(shape[-2], n_q) and d_k is not None and \
            broadcast(shape, batch + (n_q, d_k)) == batch + (n_q, d_k):
        gran = "channel"
    else:
        want = f"[{', '.join(show_dim(d) for d in batch)}] per head, [.., {show_dim(n_q)}] per token or " \
               f"[.., {show_dim(n_q)}, {show_dim(d_k) if d_k is not None else 'Dk'}] per key channel"
        raise ctx.error(f"decay rate of shape {t} does not fit this mix; expected {want}")
    return dataclasses.replace(m, granularity=gran)


def _ssm_shapes(kind: str, state, channels, mimo: bool, conj: bool, disc: str = "zoh", groups=None,
                a_real: str = "negative", dt_split: bool = False) -> dict[str, tuple]:
    """The parameters of an SSM kernel generator for ``channels`` channels: A (and DPLR's P, B)
    per channel group (``groups``, default one per channel), C and Δ per channel."""
    shapes = _ssm_shapes_all(kind, state, channels, mimo, conj, channels if groups is None else groups)
    if a_real == "free":   # DSS: Re A unconstrained, stored as it is
        shapes = {("A_real" if k == "log_A_real" else k): v for k, v in shapes.items()}
    if dt_split and "log_dt" in shapes:
        shapes["log_dt"] = shapes["log_dt"] + (2,)   # Δ for Re A, Δ for Im A
    if disc == "none":
        shapes.pop("log_dt", None)   # no discretisation step (DLR, Mega's EMA)
    return shapes


def _ssm_shapes_all(kind: str, state, channels, mimo: bool, conj: bool, groups) -> dict[str, tuple]:
    half = state / 2 if conj and kind in ("diag", "dplr") else state
    if kind == "shift":
        return {"C_re": (channels, state)}
    if kind == "ema":
        return {"alpha": (channels, state), "delta": (channels, state), "beta": (channels, state),
                "C_re": (channels, state)}
    if mimo:
        shapes = {"log_dt": (half,), "log_A_real": (half,), "A_imag": (half,), "B_re": (half, channels),
                  "B_im": (half, channels), "C_re": (channels, half), "C_im": (channels, half)}
    else:
        shapes = {"log_dt": (channels,), "log_A_real": (groups, half), "A_imag": (groups, half),
                  "C_re": (channels, half), "C_im": (channels, half)}
    if kind == "dplr":
        shapes.update({"P_re": (groups, half), "P_im": (groups, half), "B_re": (groups, half),
                       "B_im": (groups, half)})
    return shapes


def _create_pending(ctx: Ctx, item, inputs, v, q, batch, feature_obj, mask_obj):
    tag = item[0]
    if tag == "ssm":
        _, obj, pos, *share = item
        return feature_obj, _complete_ssm(ctx, obj, pos, inputs, v, mask_obj, share[0] if share else True)
    if tag == "favor":
        _, m, orthogonal, seed = item
        t = ctx.param("features", (m, q.type.shape[-1]),
                      Init("orthogonal_gaussian" if orthogonal else "normal", (sympy.Integer(seed),), False))
        role = ctx.el.new_role("features")
        inputs.append((role, t))
        return dataclasses.replace(feature_obj, projection=M.Ref(role)), mask_obj
    if tag == "spectral":
        return _spectral_params(ctx, item, inputs, q, feature_obj), mask_obj
    raise AssertionError(tag)


def _complete_ssm(ctx: Ctx, obj: M.SSMKernel, pos, inputs, v, mask_obj, share: bool = True):
    channels = v.type.shape[-1]
    if obj.groups is not None:
        ratio = sympy.simplify(channels / obj.groups)
        if ratio.is_number and not ratio.is_integer:
            raise SeqError(f"ssm(): groups = {show_dim(obj.groups)} must divide the {show_dim(channels)} "
                           "channels of the mix", pos)
    want = _ssm_shapes(obj.kind, obj.state, channels, obj.mimo, obj.conj, obj.disc, obj.groups, obj.a_real,
                       obj.dt_split)
    have = dict(obj.params)
    given = dict(inputs)
    for name, ref in have.items():
        if name not in want:
            raise ctx.error(f"ssm({obj.kind}) takes no {name!r}; it takes " + ", ".join(want))
        t = given[ref.role]
        shape = want[name]
        if len(shape) != t.type.rank or not all(same_dim(a, b) for a, b in zip(shape, t.type.shape)):
            text = "[" + ", ".join(show_dim(d) for d in shape) + "]"
            raise ctx.error(f"ssm({obj.kind}): {name} must have shape {text} for {show_dim(channels)} "
                            f"channels and state {show_dim(obj.state)}, got {t.type}")
    args = () if obj.dt_range is None else tuple(obj.dt_range)
    init = obj.init
    if obj.blocks is not None:                  # codegen.toeplitz.kernels reads "legs:16"
        modes = sympy.sympify(want["A_imag"][-1])
        ctx.el.require(sympy.Eq(sympy.Mod(modes, obj.blocks), 0),
                       f"ssm(): blocks = {obj.blocks} must divide the {show_dim(modes)} modes of Λ", pos)
        init = f"{obj.init}:{int(obj.blocks)}"
    refs = dict(have)
    for name, shape in want.items():
        if name not in have:
            refs[name] = _kernel_param(ctx, inputs, f"kernel.{name}", shape, init, args)
    reverse = ()
    if not _is_causal(mask_obj, obj):
        # The backward direction: its own C, the rest shared (share = true, as the released
        # S4/S4D/DSS/DLR/S5), or a second SSM with its own weights. Given tensors, if any,
        # serve both directions.
        own = {"C_re", "C_im"} if share and obj.kind != "shift" else set(want)
        reverse = tuple(sorted(
            (name, refs[name] if name in have or name not in own
             else _kernel_param(ctx, inputs, f"kernel_rev.{name}", shape, init, args))
            for name, shape in want.items()))
    new = dataclasses.replace(obj, params=tuple(sorted(refs.items())), reverse=reverse)
    return _replace_kernel(mask_obj, obj, new)


def _kernel_param(ctx: Ctx, inputs, path: str, shape, init: str, args: tuple = ()) -> M.Ref:
    t = ctx.param(path, shape, Init(f"ssm_{init}", args, True))
    role = ctx.el.new_role(path + ".")
    inputs.append((role, t))
    return M.Ref(role)


def _is_causal(m, kernel) -> bool:
    return all(leaf.causal for leaf in M.mask_leaves(m) if isinstance(leaf, M.Toeplitz) and leaf.kernel is kernel)


def _replace_kernel(m, old, new):
    if isinstance(m, (M.And, M.Or)):
        return type(m)(_replace_kernel(m.left, old, new), _replace_kernel(m.right, old, new))
    if isinstance(m, M.Toeplitz) and m.kernel is old:
        return dataclasses.replace(m, kernel=new)
    return m


def _spectral_params(ctx: Ctx, item, inputs, q, feature: M.Feature) -> M.Feature:
    """The weights of spectral(m, learn, heads): learned frequencies Ω [(H,) m, Dk] ~ N(0, 1), or
    GMM-RKS's mean μ [(H,) Dk] and matrix Σ [(H,) Dk, Dk] with the noise buffer ε [Dk, m], at the
    reference's inits (fast_transformers GaussianMixtureFourierFeatures: Σ xavier-uniform, μ
    uniform ±1/√fan_in(Σ); torch's fans of a [H, Dk, Dk] tensor: Dk·Dk in, H·Dk out)."""
    _, m, learn, heads = item
    dk = q.type.shape[-1]
    lead: tuple = ()
    if heads is not None:
        if q.type.rank < 3 or not same_dim(q.type.shape[-3], heads):
            raise ctx.error(f"spectral(heads = {heads}): q and k must be [.., {heads}, N, Dk], got {q.type}")
        lead = (heads,)

    def add(name: str, shape: tuple, init: Init) -> M.Ref:
        role = ctx.el.new_role(name)
        inputs.append((role, ctx.param(name, shape, init)))
        return M.Ref(role)

    if learn == "frequencies":
        return dataclasses.replace(feature, projection=add("frequencies", (*lead, m, dk),
                                                            Init("normal", (sympy.Integer(1),))))
    fan_in, fan_out = (dk * dk, heads * dk) if heads is not None else (dk, dk)
    bound = sympy.sqrt(6 / (fan_in + fan_out))
    scale = add("scale", (*lead, dk, dk), Init("uniform", (-bound, bound)))
    mean = add("mean", (*lead, dk), Init("uniform", (-fan_in ** sympy.Rational(-1, 2), fan_in ** sympy.Rational(-1, 2))))
    noise = add("noise", (dk, m), Init("normal", (sympy.Integer(1),), False))
    return dataclasses.replace(feature, projection=noise, mean=mean, scale=scale)
