"""Nothing the language accepts is dropped: every argument of every builtin (the checker's
signature table, ``seqdsl.check.builtins.REGISTRY``) changes what the generated module computes
(its outputs, its weights or which of them train) or the cost analysis when it is varied — or
it is listed below as a documented pure hint, or as an operand (the data a call works on).

Each case is two calls that differ in that one argument only. A new argument without a case
fails ``test_every_argument_has_a_case`` by name: add its case (or its reason) here.
"""

from __future__ import annotations

import functools
import json
import re
import warnings

import pytest

torch = pytest.importorskip("torch", reason="the generated modules need torch")

import seqdsl  # noqa: E402
from seqdsl.check import builtins as B  # noqa: E402
from seqdsl.check.signature import REQUIRED  # noqa: E402

# The data a call works on: the operand itself (what is mixed, normalised, routed ...).
OPERAND_KINDS = ("tensor", "tensors", "func", "kernel", "sizes", "any")

# Arguments whose value the shapes fix (any other value is a shape error), with why.
SHAPE_BOUND = {
    ("relative", "heads"): "must equal the heads axis of the scores it is added to",
    ("rearrange", "pattern"): "the pattern is the operation (a different one is a different op)",
    ("expand", "shape"): "the target shape is the result's shape",
    ("embed", "vocab"): "the table's rows (the ids index them)",
    ("linear", "out"): "the result's last axis",
    ("arange", "n"): "the result's length",
    ("sinusoidal", "n"): "the result's length",
    ("sinusoidal", "dim"): "the result's width",
    ("transpose", "a"): "the axes are the operation",
    ("transpose", "b"): "the axes are the operation",
    ("recurrent", "segment"): "the step's declared input length",
}

# Pure hints: they choose how, never what (documented in docs/language.md, "hints").
HINTS = {
    ("mix", "dtype"): "a precision hint for generated kernels; the PyTorch path computes in the inputs' dtype",
}

QKV = "dim B = 1, H = 2, N = 16, Dh = 4\nmodel m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) -> [B, H, N, Dh] {\n"
XD = "dim B = 1, N = 16, D = 8\nmodel m(x: [B, N, D]) -> [B, N, D] {\n"
XH = ("dim B = 1, N = 16, D = 8, H = 2\nmodel m(x: [B, N, D]) -> [B, H, N, D / H] {\n"
      "  q = rearrange(x, \"b n (h d) -> b h n d\", h = H)\n")


def qkv(mix_args: str) -> str:
    return QKV + f"  return mix(q, k, v, {mix_args})\n}}\n"


def mask(m: str, norm: str = "softmax") -> str:
    return qkv(f"score = dot(), mask = {m}, norm = {norm}")


def xd(expr: str, pre: str = "") -> str:
    return XD + pre + f"  return {expr}\n}}\n"


def init(call: str) -> str:
    return xd(f"linear(x, D, init = {call})")


def ssm(args: str, extra: str = "") -> str:
    return xd(f"mix(v = x, mask = toeplitz(ssm({args}){extra}))")


def feat(f: str) -> str:
    return qkv(f"feature = {f}, mask = causal(), norm = sum")


# (builtin, argument) -> (base source, varied source)
CASES: dict[tuple[str, str], tuple[str, str]] = {
    ("normal", "std"): (init("normal(0.02)"), init("normal(0.5)")),
    ("normal", "trainable"): (init("normal(0.02)"), init("normal(0.02, trainable = false)")),
    ("truncated_normal", "std"): (init("truncated_normal(0.02)"), init("truncated_normal(0.5)")),
    ("truncated_normal", "trainable"): (init("truncated_normal(0.02)"),
                                        init("truncated_normal(0.02, trainable = false)")),
    ("uniform", "low"): (init("uniform(-0.1, 0.1)"), init("uniform(-0.5, 0.1)")),
    ("uniform", "high"): (init("uniform(-0.1, 0.1)"), init("uniform(-0.1, 0.5)")),
    ("uniform", "trainable"): (init("uniform(-0.1, 0.1)"), init("uniform(-0.1, 0.1, trainable = false)")),
    ("zeros", "trainable"): (init("zeros()"), init("zeros(trainable = false)")),
    ("ones", "trainable"): (init("ones()"), init("ones(trainable = false)")),
    ("constant", "value"): (init("constant(0.5)"), init("constant(0.25)")),
    ("constant", "trainable"): (init("constant(0.5)"), init("constant(0.5, trainable = false)")),
    ("orthogonal", "scale"): (init("orthogonal()"), init("orthogonal(scale = 2)")),
    ("orthogonal", "trainable"): (init("orthogonal()"), init("orthogonal(trainable = false)")),
    ("causal", "offset"): (mask("causal()"), mask("causal(offset = 2)")),
    ("window", "size"): (mask("window(4)"), mask("window(6)")),
    ("window", "block"): (mask("window(2)"), mask("window(2, block = 4)")),
    ("local", "size"): (mask("local(4)"), mask("local(8)")),
    ("strided", "stride"): (mask("strided(4)"), mask("strided(8)")),
    ("global_tokens", "count"): (mask("window(2) | global_tokens(1)"), mask("window(2) | global_tokens(2)")),
    ("random_blocks", "count"): (mask("window(2) | random_blocks(1, 4)"), mask("window(2) | random_blocks(2, 4)")),
    ("random_blocks", "block"): (mask("window(2) | random_blocks(1, 4)"), mask("window(2) | random_blocks(1, 8)")),
    ("random_blocks", "seed"): (mask("window(2) | random_blocks(1, 4)"),
                                mask("window(2) | random_blocks(1, 4, seed = 5)")),
    ("random_blocks", "per_head"): (mask("window(2) | random_blocks(1, 4)"),
                                    mask("window(2) | random_blocks(1, 4, per_head = true)")),
    ("random_blocks", "exclude"): (mask("window(2) | random_blocks(1, 4, seed = 2)"),
                                   mask("window(2) | random_blocks(1, 4, seed = 2, exclude = window(2))")),
    ("key_range", "start"): (mask("causal() | key_range(2)"), mask("causal() | key_range(4)")),
    ("key_range", "stop"): (mask("causal() | key_range(2)"), mask("causal() | key_range(2, 6)")),
    ("query_range", "start"): (mask("causal() | query_range(12)"), mask("causal() | query_range(8)")),
    ("query_range", "stop"): (mask("causal() | query_range(8)"), mask("causal() | query_range(8, 12)")),
    ("butterfly", "block"): (mask("butterfly(4)"), mask("butterfly(8)")),
    ("butterfly", "factors"): (mask("butterfly(4)"), mask("butterfly(4, factors = 1)")),
    ("butterfly", "size"): (xd("linear(x, D, sparsity = butterfly(2))"),
                            xd("linear(x, D, sparsity = butterfly(2, size = 2))")),
    ("document", "length"): (
        "dim B = 1, H = 2, N = 16, Dh = 4\nmodel m(q: [B, H, N, Dh], d: int[B, H, N]) -> [B, H, N, Dh] {\n"
        "  return mix(q, q, q, score = dot(), mask = causal() & document(d), norm = softmax)\n}\n",
        "dim B = 1, H = 2, N = 16, Dh = 4\nmodel m(q: [B, H, N, Dh], d: int[B, H, N]) -> [B, H, N, Dh] {\n"
        "  return mix(q, q, q, score = dot(), mask = causal() & document(d, length = 4), norm = softmax)\n}\n"),
    ("decay", "rate"): (mask("causal() & decay(rate = 0.9)", "none"), mask("causal() & decay(rate = 0.5)", "none")),
    ("decay", "log"): (mask("causal() & decay(rate = 0.9)", "none"), mask("causal() & decay(log = -0.5)", "none")),
    ("toeplitz", "causal"): (ssm("diag, state = 4"), ssm("diag, state = 4", ", causal = false")),
    ("toeplitz", "share"): (ssm("diag, state = 4", ", causal = false"),
                            ssm("diag, state = 4", ", causal = false, share = false")),
    ("toeplitz", "diagonal"): (ssm("diag, state = 4", ", causal = false"),
                               ssm("diag, state = 4", ", causal = false, diagonal = shift")),
    ("block_map", "block"): (
        "dim B = 1, H = 2, N = 16, Dh = 4\nmodel m(q: [B, H, N, Dh], s: int[B, H, 4]) -> [B, H, N, Dh] {\n"
        "  return mix(q, q, q, score = dot(), mask = block_map(s, 4), norm = softmax)\n}\n",
        "dim B = 1, H = 2, N = 16, Dh = 4\nmodel m(q: [B, H, N, Dh], s: int[B, H, 2]) -> [B, H, N, Dh] {\n"
        "  return mix(q, q, q, score = dot(), mask = block_map(s, 8), norm = softmax)\n}\n"),
    ("dot", "scale"): (qkv("score = dot(), norm = softmax"), qkv("score = dot(scale = 0.9), norm = softmax")),
    ("dot", "bias"): (qkv("score = dot(), norm = softmax"), qkv("score = dot(bias = alibi()), norm = softmax")),
    ("dot", "cap"): (qkv("score = dot(), norm = softmax"), qkv("score = dot(cap = 0.5), norm = softmax")),
    ("alibi", "slopes"): (qkv("score = dot(bias = alibi()), norm = softmax"),
                          QKV + "  param s: [H] = constant(2.0)\n"
                          "  return mix(q, k, v, score = dot(bias = alibi(slopes = s)), norm = softmax)\n}\n"),
    ("relative", "buckets"): (qkv("score = dot(bias = relative(heads = H)), norm = softmax"),
                              qkv("score = dot(bias = relative(heads = H, buckets = 8)), norm = softmax")),
    ("relative", "table"): (qkv("score = dot(bias = relative(heads = H, buckets = 8)), norm = softmax"),
                            QKV + "  param t: [H, 8] = normal(1.0)\n  return mix(q, k, v, score = dot(bias = "
                            "relative(heads = H, buckets = 8, table = t)), norm = softmax)\n}\n"),
    ("relative", "max_distance"): (
        qkv("score = dot(bias = relative(heads = H, buckets = 8, table = t)), norm = softmax").replace(
            "  return", "  param t: [H, 8] = normal(1.0)\n  return"),
        qkv("score = dot(bias = relative(heads = H, buckets = 8, table = t, max_distance = 12)), norm = softmax"
            ).replace("  return", "  param t: [H, 8] = normal(1.0)\n  return")),
    ("relative", "bidirectional"): (
        qkv("score = dot(bias = relative(heads = H, buckets = 8, table = t, max_distance = 12)), norm = softmax"
            ).replace("  return", "  param t: [H, 8] = normal(1.0)\n  return"),
        qkv("score = dot(bias = relative(heads = H, buckets = 8, table = t, max_distance = 12, "
            "bidirectional = false)), norm = softmax").replace("  return", "  param t: [H, 8] = normal(1.0)\n  return")),
    ("favor", "features"): (feat("favor(8)"), feat("favor(16)")),
    ("favor", "orthogonal"): (feat("favor(8)"), feat("favor(8, orthogonal = false)")),
    ("favor", "seed"): (feat("favor(8)"), feat("favor(8, seed = 3)")),
    ("spectral", "features"): (feat("spectral(8)"), feat("spectral(16)")),
    ("spectral", "smoothing"): (feat("spectral(8)"), feat("spectral(8, smoothing = 1.0)")),
    ("spectral", "learn"): (feat("spectral(8)"), feat("spectral(8, learn = gaussian)")),
    ("spectral", "heads"): (feat("spectral(8)"), feat("spectral(8, heads = H)")),
    ("spectral", "redraw"): (feat("spectral(8, learn = gaussian, redraw = never)"),
                             feat("spectral(8, learn = gaussian, redraw = always)")),
    ("ssm", "kind"): (ssm("diag, state = 4"), ssm("shift, state = 4")),
    ("ssm", "state"): (ssm("diag, state = 4"), ssm("diag, state = 8")),
    ("ssm", "init"): (ssm("diag, state = 4"), ssm("diag, state = 4, init = s4d_inv")),
    ("ssm", "blocks"): (ssm("diag, state = 8, init = legs"), ssm("diag, state = 8, init = legs, blocks = 2")),
    ("ssm", "disc"): (ssm("diag, state = 4"), ssm("diag, state = 4, disc = bilinear")),
    ("ssm", "mimo"): (ssm("diag, state = 4"), ssm("diag, state = 4, mimo = true")),
    ("ssm", "conj"): (ssm("diag, state = 4"), ssm("diag, state = 4, conj = false")),
    ("ssm", "groups"): (ssm("diag, state = 4"), ssm("diag, state = 4, groups = 2")),
    ("ssm", "dt_min"): (ssm("diag, state = 4"), ssm("diag, state = 4, dt_min = 0.0001")),
    ("ssm", "dt_max"): (ssm("diag, state = 4"), ssm("diag, state = 4, dt_max = 0.5")),
    ("ssm", "a_real"): (ssm("diag, state = 4, init = dss, disc = dss"),
                        ssm("diag, state = 4, init = dss, disc = dss, a_real = free")),
    ("ssm", "dt_split"): (ssm("diag, state = 4, init = dss, disc = dss"),
                          ssm("diag, state = 4, init = dss, disc = dss, dt_split = true")),
    ("mix", "score"): (qkv("score = dot(), norm = softmax"), qkv("score = dot(scale = 0.1), norm = softmax")),
    ("mix", "feature"): (feat("elu1"), feat("relu")),
    ("mix", "mask"): (qkv("score = dot(), norm = softmax"), qkv("score = dot(), mask = causal(), norm = softmax")),
    ("mix", "norm"): (qkv("score = dot(), mask = causal(), norm = softmax"),
                      qkv("score = dot(), mask = causal(), norm = none")),
    ("mix", "algorithm"): (qkv("score = dot(), mask = causal(), norm = softmax, algorithm = tiled"),
                           qkv("score = dot(), mask = causal(), norm = softmax, algorithm = materialized")),
    ("mix", "chunk"): (feat("elu1").replace("norm = sum", "norm = none, algorithm = chunked"),
                       feat("elu1").replace("norm = sum", "norm = none, algorithm = chunked, chunk = 4")),
    ("mix", "block"): (qkv("score = dot(), mask = causal(), norm = softmax, algorithm = tiled"),
                       qkv("score = dot(), mask = causal(), norm = softmax, algorithm = tiled, block = 4")),
    ("linear", "bias"): (xd("linear(x, D)"), xd("linear(x, D, bias = false)")),
    ("linear", "weight"): (xd("linear(x, D)"), xd("linear(x, D, weight = tw)", "  param tw: [D, D] = normal(1.0)\n")),
    ("linear", "init"): (xd("linear(x, D)"), xd("linear(x, D, init = normal(1.0))")),
    ("linear", "sparsity"): (xd("linear(x, D)"), xd("linear(x, D, sparsity = butterfly(2))")),
    ("seq_project", "out"): (xd("seq_project(x, 16)"), xd("concat([seq_project(x, 8), seq_project(x, 8)], -2)")),
    ("embed", "dim"): (
        "dim B = 1, N = 16, D = 8, V = 10\nmodel m(t: int[B, N]) -> [B, N, D] {\n  return embed(t, V, D)\n}\n",
        "dim B = 1, N = 16, D = 8, V = 10\nmodel m(t: int[B, N]) -> [B, N, D] {\n"
        "  return concat([embed(t, V, 4), embed(t, V, 4)])\n}\n"),
    ("embed", "table"): (
        "dim B = 1, N = 16, D = 8, V = 10\nmodel m(t: int[B, N]) -> [B, N, D] {\n  return embed(t, V, D)\n}\n",
        "dim B = 1, N = 16, D = 8, V = 10\nmodel m(t: int[B, N]) -> [B, N, D] {\n"
        "  param e: [V, D] = normal(1.0)\n  return embed(t, table = e)\n}\n"),
    ("layernorm", "bias"): (xd("layernorm(x)"), xd("layernorm(x, bias = false)")),
    ("layernorm", "affine"): (xd("layernorm(x)"), xd("layernorm(x, affine = false)")),
    ("layernorm", "eps"): (xd("layernorm(x * 0.001)"), xd("layernorm(x * 0.001, eps = 0.1)")),
    ("rmsnorm", "eps"): (xd("rmsnorm(x * 0.001)"), xd("rmsnorm(x * 0.001, eps = 0.1)")),
    ("batchnorm", "eps"): (xd("batchnorm(x * 0.001)"), xd("batchnorm(x * 0.001, eps = 0.1)")),
    ("groupnorm", "eps"): (xd("groupnorm(x * 0.001, 2)"), xd("groupnorm(x * 0.001, 2, eps = 0.1)")),
    ("groupnorm", "groups"): (xd("groupnorm(x, 2)"), xd("groupnorm(x, 4)")),
    ("mlp", "hidden"): (xd("mlp(x, 8)"), xd("mlp(x, 16)")),
    ("mlp", "out"): (xd("mlp(x, 8)"), xd("concat([mlp(x, 8, out = 4), x[..., : 4]])")),
    ("mlp", "act"): (xd("mlp(x, 8)"), xd("mlp(x, 8, act = relu)")),
    ("mlp", "gated"): (xd("mlp(x, 8)"), xd("mlp(x, 8, gated = true)")),
    ("mlp", "bias"): (xd("mlp(x, 8)"), xd("mlp(x, 8, bias = false)")),
    ("mlp", "sparsity"): (xd("mlp(x, 8)"), xd("mlp(x, 8, sparsity = butterfly(2))")),
    ("conv1d", "width"): (xd("conv1d(x, 3)"), xd("conv1d(x, 4)")),
    ("conv1d", "causal"): (xd("conv1d(x, 3)"), xd("conv1d(x, 3, causal = false)")),
    ("conv1d", "bias"): (xd("conv1d(x, 3)"), xd("conv1d(x, 3, bias = false)")),
    ("pool", "size"): (xd("concat([pool(x, 4), pool(x, 4), pool(x, 4), pool(x, 4)], -2)"),
                       xd("concat([pool(x, 2), pool(x, 2)], -2)")),
    ("pool", "kind"): (xd("concat([pool(x, 4), pool(x, 4), pool(x, 4), pool(x, 4)], -2)"),
                       xd("concat([pool(x, 4, kind = max), pool(x, 4), pool(x, 4), pool(x, 4)], -2)")),
    ("mean", "axis"): (xd("x - mean(x, keep = true)"), xd("x - mean(x, axis = -2, keep = true)")),
    ("mean", "keep"): (xd("x - mean(x, keep = true)"), xd("x - mean(x)[..., None]")),
    ("sum", "axis"): (xd("x - sum(x, keep = true)"), xd("x - sum(x, axis = -2, keep = true)")),
    ("sum", "keep"): (xd("x - sum(x, keep = true)"), xd("x - sum(x)[..., None] * 2")),
    ("max", "axis"): (xd("x - max(x, keep = true)"), xd("x - max(x, axis = -2, keep = true)")),
    ("max", "keep"): (xd("x - max(x, keep = true)"), xd("x - max(x)[..., None] * 2")),
    ("softmax", "axis"): (xd("softmax(x)"), xd("softmax(x, axis = -2)")),
    ("rotary", "fraction"): (xd("rotary(x)"), xd("rotary(x, fraction = 0.5)")),
    ("rotary", "base"): (xd("rotary(x)"), xd("rotary(x, base = 100)")),
    ("dropout", "p"): (xd("dropout(x)"), xd("dropout(x, p = 0.5)")),
    ("concat", "axis"): (xd("concat([x[..., : 4], x[..., 4 :]])"), xd("concat([x[..., 8 :, :], x[..., : 8, :]], -2)")),
    ("lsh", "buckets"): (mask("buckets(lsh(q, 4))"), mask("buckets(lsh(q, 8))")),
    ("lsh", "seed"): (mask("buckets(lsh(q, 4))"), mask("buckets(lsh(q, 4, seed = 7))")),
    ("sinkhorn_sort", "block"): (xd("x * sum(sinkhorn_sort(x, 4), keep = true)[..., None]"),
                                 xd("x * sum(sinkhorn_sort(x, 8), keep = true)[..., None]")),
    ("sinkhorn_sort", "iters"): (xd("x * sum(sinkhorn_sort(x, 4), keep = true)[..., None]"),
                                 xd("x * sum(sinkhorn_sort(x, 4, iters = 1), keep = true)[..., None]")),
}

_MOE = ("dim B = 1, N = 16, D = 8\nblock f(x: [B, N, D]) -> [B, N, D] { return mlp(x, 8, act = relu) }\n"
        "model m(x: [B, N, D]) -> [B, N, D] {\n  return moe(x, expert = f, experts = EXPERTS ARGS)\n}\n")
_DEQ = ("dim B = 1, N = 4, D = 8\nblock c(z: [B, N, D], x: [B, N, D]) -> [B, N, D] {\n"
        "  return tanh(linear(z, D, init = normal(0.3)) + x)\n}\nmodel m(x: [B, N, D]) -> [B, N, D] {\n"
        "  param z0: [D] = zeros(trainable = false)\n  return fixed_point(c, expand(z0, [B, N, D]), x ARGS)\n}\n")


_DEQ_NO_X = ("dim B = 1, N = 4, D = 8\nblock c(z: [B, N, D]) -> [B, N, D] {\n"
             "  return tanh(linear(z, D, init = normal(0.3)) + 1)\n}\nmodel m(x: [B, N, D]) -> [B, N, D] {\n"
             "  param z0: [D] = zeros(trainable = false)\n  return x + fixed_point(c, expand(z0, [B, N, D]))\n}\n")


def _moe(args: str, experts: str = "4") -> str:
    return _MOE.replace("EXPERTS", experts).replace("ARGS", args)


def _deq(args: str) -> str:
    return _DEQ.replace("ARGS", args)


CASES.update({
    ("moe", "experts"): (_moe(""), _moe("", "2")),
    ("moe", "top_k"): (_moe(""), _moe(", top_k = 2")),
    ("moe", "capacity"): (_moe(""), _moe(", capacity = 0.25")),
    ("moe", "balance"): (_moe(""), _moe(", balance = 0.5")),
    ("moe", "z_loss"): (_moe(""), _moe(", z_loss = 0.5")),
    ("moe", "router_init"): (_moe(""), _moe(", router_init = normal(1.0)")),
    ("fixed_point", "x"): (_deq(""), _DEQ_NO_X),
    ("fixed_point", "iters"): (_deq(", iters = 2, tol = 0"), _deq(", iters = 3, tol = 0")),
    ("fixed_point", "tol"): (_deq(", iters = 8, tol = 0.1"), _deq(", iters = 8, tol = 0.000001")),
    ("fixed_point", "solver"): (_deq(", iters = 3"), _deq(", iters = 3, solver = picard")),
    ("fixed_point", "backward_solver"): (_deq(", iters = 3, tol = 0"), _deq(", iters = 3, tol = 0, backward_solver = picard")),
    ("fixed_point", "backward_iters"): (_deq(", iters = 3, tol = 0"), _deq(", iters = 3, tol = 0, backward_iters = 2")),
    ("fixed_point", "jac_loss"): (_deq(", iters = 3"), _deq(", iters = 3, jac_loss = 0.5")),
    ("fixed_point", "jac_freq"): (_deq(", iters = 3, jac_loss = 0.5"),
                                  _deq(", iters = 3, jac_loss = 0.5, jac_freq = 0.0001")),
})


@functools.cache
def _module_print(src: str) -> str:
    """What a variation can change: outputs at seed 0, the weights (names, shapes, sums, which
    train), the losses left behind by an inference forward and by a training one."""
    sizes = {d: int(v) for d, v in re.findall(r"\b([BN]) = (\d+)", src.split("\n", 1)[0])}
    model = seqdsl.load(src, **sizes)     # lengths fixed: no table of algorithms by length to build
    torch.manual_seed(0)
    inputs = model.example_inputs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    weights = sorted((k, tuple(v.shape), round(float(v.double().sum()), 6)) for k, v in model.state_dict().items())
    trains = sorted(k for k, p in model.named_parameters())
    aux = round(float(model.aux_loss()), 6)
    torch.manual_seed(0)
    with warnings.catch_warnings():   # training: the losses only it leaves, the gradients
        warnings.simplefilter("ignore")
        out_t = model.train()(*inputs)
        aux_train = model.aux_loss()
        loss = sum(o.float().square().mean() for o in (out_t if isinstance(out_t, tuple) else (out_t,))
                   if o.is_floating_point()) + aux_train
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.backward()
    grads = sorted((k, round(float(p.grad.double().sum()), 6)) for k, p in model.named_parameters() if p.grad is not None)
    return json.dumps({"out": [o.double().numpy().round(5).tolist() for o in out], "weights": weights,
                       "trains": trains, "aux": aux, "aux_train": round(float(aux_train.detach()), 6), "grads": grads})


@functools.cache
def _analysis_print(src: str) -> str:
    return json.dumps(seqdsl.analyze(src).to_dict(), sort_keys=True)


def _accepted() -> list[tuple[str, str]]:
    return [(b.name, p.name) for b in B.REGISTRY.values() for p in b.params]


def _operand(name: str, param: str) -> bool:
    p = next(p for p in B.REGISTRY[name].params if p.name == param)
    return p.kind in OPERAND_KINDS and (p.default is REQUIRED or p.kind in ("kernel", "sizes")) or (
        p.kind == "tensor" and name in ("mix", "ssm") and param in ("q", "k") + SSM_TENSORS)


# An SSM's parameters given as tensors (a functional kernel): operands of the mixer.
SSM_TENSORS = ("log_dt", "log_A_real", "A_real", "A_imag", "B_re", "B_im", "C_re", "C_im", "P_re", "P_im",
               "alpha", "delta", "beta")
def test_every_argument_has_a_case():
    missing = [f"{b}({p}=)" for b, p in _accepted()
               if (b, p) not in CASES and (b, p) not in HINTS and (b, p) not in SHAPE_BOUND and not _operand(b, p)]
    assert not missing, "arguments without a case in tests/check/test_builtin_arguments.py: " + ", ".join(missing)
    stale = [k for k in CASES if k not in set(_accepted())]
    assert not stale, f"cases for arguments that no longer exist: {stale}"


@pytest.mark.parametrize("key", sorted(CASES), ids=[f"{b}-{p}" for b, p in sorted(CASES)])
def test_varying_the_argument_changes_the_module_or_the_analysis(key):
    base, varied = CASES[key]
    if _module_print(base) != _module_print(varied):
        return                                    # outputs, weights or the losses differ
    assert _analysis_print(base) != _analysis_print(varied), \
        f"{key[0]}({key[1]}=...) changed neither the module nor the analysis"


@pytest.mark.parametrize("value", ["0.5", "-2"])
def test_a_number_where_an_init_is_expected_means_constant(value):
    """``init = 0.5`` is ``init = constant(0.5)`` (found by the fuzzer: a bare number once reached
    linear() unwrapped and raised AttributeError instead of building the layer)."""
    assert _module_print(init(value)) == _module_print(init(f"constant({value})"))
