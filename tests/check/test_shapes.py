"""The shape checker: broadcasting, symbolic sizes, unification, constraints, parameters."""

from __future__ import annotations

import pytest
import sympy

import seqdsl
from seqdsl.ir.types import broadcast, dim_symbol, same_dim

B, N, D, H = (dim_symbol(s) for s in "BNDH")
ONE = sympy.Integer(1)


def out(text: str, **sizes):
    checked = seqdsl.check(text, **sizes)
    return checked.outputs[0]


def test_broadcast_rules():
    assert broadcast((B, N, D), (D,)) == (B, N, D)
    assert broadcast((B, ONE, D), (N, ONE)) == (B, N, D)
    assert broadcast((N, D), (D, N)) is None
    assert same_dim(D / H * H, D)


def test_rearrange_splits_and_merges_with_a_constraint():
    text = ("dim B, N = 8, D = 12, H = 3\nmixer m(x: [B, N, D]) {\n"
            "  y = rearrange(x, \"b n (h d) -> b h n d\", h = H)\n  return rearrange(y, \"b h n d -> b n (h d)\")\n}\n")
    checked = seqdsl.check(text)
    heads = [n for n in checked.graph.nodes() if n.kind.value == "rearrange"][0]
    assert heads.out.shape == (B, H, N, D / H)
    assert checked.outputs[0].shape == (B, N, D)
    with pytest.raises(seqdsl.SeqError, match="divisible"):
        seqdsl.check(text, D=10)


def test_symbolic_slices():
    t = out("dim N = 16, M = 4, D = 2\nmixer m(x: [N, D]) {\n  return x[-M:, 0]\n}\n")
    assert t.shape == (dim_symbol("M"),)
    t = out("dim N = 16, D = 2\nmixer m(x: [N, D]) {\n  return x[1:N - 1, None, :]\n}\n")
    assert t.shape == (N - 2, ONE, dim_symbol("D"))


def test_matmul_batch_broadcast():
    t = out("dim B = 2, N = 4, D = 3\nmixer m(x: [B, N, D], w: [D, N]) {\n  return x @ w\n}\n")
    assert t.shape == (B, N, N)


def test_derived_dims_are_aliases():
    checked = seqdsl.check("dim N = 8, D = 8, H = 2\ndim Dh = D / H\nmixer m(x: [N, Dh]) {\n  return x\n}\n")
    assert checked.inputs[0][1].shape == (N, D / H)


def test_config_parameters_unify_with_argument_shapes():
    text = ("dim B, N = 16, M = 4, D = 8\nblock f(x: [B, T, D], T = N) -> [B, T, D] {\n  return x * 2\n}\n"
            "model m(x: [B, N, D], y: [B, M, D]) {\n  return concat([f(x), f(y)], axis = 1)\n}\n")
    assert out(text).shape == (B, N + dim_symbol("M"), D)


def test_constraints_are_deferred_until_sizes_are_known():
    text = "dim N, W = 4\nrequire N % W == 0, \"N must be a multiple of W\"\nmixer m(x: [N]) {\n  return x\n}\n"
    checked = seqdsl.check(text)
    assert any("multiple of W" in msg for _c, msg, _p in checked.constraints)
    seqdsl.check(text, N=8)
    with pytest.raises(seqdsl.SeqError, match="multiple of W"):
        seqdsl.check(text, N=6)


def test_parameter_count_of_a_transformer_block_is_the_hand_formula():
    text = ("dim B, N = 16, D = 8, H = 2\nblock layer(x: [B, N, D]) {\n"
            "  q = rearrange(linear(x, D), \"b n (h d) -> b h n d\", h = H)\n"
            "  k = rearrange(linear(x, D), \"b n (h d) -> b h n d\", h = H)\n"
            "  v = rearrange(linear(x, D), \"b n (h d) -> b h n d\", h = H)\n"
            "  x = x + linear(rearrange(mix(q, k, v), \"b h n d -> b n (h d)\"), D)\n"
            "  return layernorm(x + mlp(layernorm(x), 4 * D))\n}\n")
    count = seqdsl.check(text).param_count
    assert sympy.expand(count - (4 * (D * D + D) + 2 * 2 * D + (4 * D * D + 4 * D) + (4 * D * D + D))) == 0


def test_shared_repeat_ties_weights():
    base = "dim B, N = 4, D = 8, L = {L}\nmodel m(x: [B, N, D]) {{\n  repeat L shared {{ x = x + linear(x, D) }}\n  return x\n}}\n"
    counts = {seqdsl.check(base.format(L=L)).param_count for L in (1, 3, 6)}
    assert counts == {D * D + D}
    untied = seqdsl.check(base.replace(" shared", "").format(L=3)).param_count
    assert untied == 3 * (D * D + D)


def test_moe_parameters_are_experts_times_expert_plus_router():
    text = ("dim B, N = 4, D = 8, E = 4\nblock ffn(x: [B, N, D]) {\n  return mlp(x, 2 * D)\n}\n"
            "model m(x: [B, N, D]) {\n  return moe(x, expert = ffn, experts = E)\n}\n")
    expert = 2 * D * D + 2 * D + 2 * D * D + D
    assert sympy.expand(seqdsl.check(text).param_count - (dim_symbol("E") * expert + dim_symbol("E") * D)) == 0


def test_decay_granularity_is_read_from_the_rate_shape():
    head = "dim B = 2, H = 4, N = 8, D = 4\n"
    qkv = "q: [B, H, N, D], k: [B, H, N, D], v: [B, H, N, D]"
    cases = {"arange(H)": "head", "g1": "token", "g2": "channel", "0.5": "scalar"}
    for rate, expected in cases.items():
        text = head + f"mixer m({qkv}, g1: [B, H, N], g2: [B, H, N, D]) {{\n" \
                      f"  return mix(q, k, v, mask = causal() & decay(rate = {rate}), norm = none)\n}}\n"
        mix = seqdsl.check(text).mixers[0]
        decay = [leaf for leaf in (mix.spec.mask.left, mix.spec.mask.right) if hasattr(leaf, "granularity")][0]
        assert decay.granularity == expected, rate


def test_families_follow_the_structure():
    head = "dim B = 2, H = 4, N = 8, D = 4\n"
    qkv = "q: [B, H, N, D], k: [B, H, N, D], v: [B, H, N, D]"
    families = {
        "mix(q, k, v, mask = causal())": "softmax",
        "mix(q, k, v, feature = elu1, mask = causal(), norm = sum)": "linear",
        "mix(q, k, v, mask = causal() & decay(0.9))": "decayed_linear",
        "mix(v = v, mask = toeplitz(ssm(diag)))": "toeplitz",
        "mix(q, k, v, mask = buckets(lsh(q, 4)))": "content_sparse",
    }
    for call, family in families.items():
        text = head + f"mixer m({qkv}) {{\n  return {call}\n}}\n"
        assert seqdsl.check(text).mixers[0].spec.family == family, call
