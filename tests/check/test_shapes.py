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


# ---- more of the same rules, and known bugs ---------------------------------------------

M = dim_symbol("M")


def test_broadcast_edge_cases():
    assert broadcast((), (N, D)) == (N, D)
    assert broadcast((ONE,), (N,)) == (N,)
    assert broadcast((N,), (ONE,)) == (N,)
    assert broadcast((N,), (M,)) is None                     # different symbols never broadcast
    assert broadcast((H, ONE, ONE), (B, ONE, N, D)) == (B, H, N, D)
    assert broadcast((2 * N,), (N + N,)) == (2 * N,)         # provably equal expressions match
    assert not same_dim(N, M) and not same_dim(N, N + 1)
    assert same_dim((N + 1) - 1, N) and same_dim(D / H * H, D)


def test_rearrange_records_divisibility_when_the_size_is_unknown():
    text = ("dim N = 8, D, H = 4\nmixer m(x: [N, D]) -> [N, H, D / H] {\n"
            "  return rearrange(x, \"n (h d) -> n h d\", h = H)\n}\n")
    checked = seqdsl.check(text)                          # D unknown: the constraint waits
    assert any("divisible" in msg for _c, msg, _p in checked.constraints)
    assert seqdsl.check(text, D=12).outputs[0].shape == (N, H, D / H)
    with pytest.raises(seqdsl.SeqError, match="divisible"):
        seqdsl.check(text, D=10)


def test_rearrange_merge_and_unit_axes():
    t = out("dim B = 2, N = 8, D = 4, H = 2\nmixer m(x: [B, H, N, D]) {\n"
            "  return rearrange(x, \"b h n d -> b n (h d) 1\")\n}\n")
    assert t.shape == (B, N, H * D, ONE)


def test_derived_dim_matches_the_split_it_names():
    text = ("dim B = 2, N = 8, D = 12, H = 3\ndim Dh = D / H\n"
            "mixer m(x: [B, N, D]) -> [B, H, N, Dh] {\n  return rearrange(x, \"b n (h d) -> b h n d\", h = H)\n}\n")
    assert out(text).shape == (B, H, N, D / H)
    with pytest.raises(seqdsl.SeqError, match="whole number"):
        seqdsl.check(text, D=10)


def test_matmul_broadcasts_batch_dims_of_different_rank():
    t = out("dim B = 2, H = 4, N = 8, D = 3\nmixer m(a: [B, 1, N, D], b: [H, D, N]) {\n  return a @ b\n}\n")
    assert t.shape == (B, H, N, N)
    with pytest.raises(seqdsl.SeqError, match="do not broadcast"):
        seqdsl.check("dim B = 2, H = 4, N = 8, D = 3\nmixer m(a: [B, N, D], b: [H, D, N]) {\n  return a @ b\n}\n")


def test_slices_with_symbolic_bounds_and_new_axes():
    head = "dim B = 2, N = 16, M = 4, D = 2\n"
    assert out(head + "mixer m(x: [B, N, D]) {\n  return x[:, -M:, ..., None]\n}\n").shape == (B, M, D, ONE)
    assert out(head + "mixer m(x: [B, N, D]) {\n  return x[:, :-M]\n}\n").shape == (B, N - M, D)
    assert out(head + "mixer m(x: [B, N, D]) {\n  return x[..., 0]\n}\n").shape == (B, N)
    assert out(head + "mixer m(x: [B, N, D]) {\n  return x.T\n}\n").shape == (B, dim_symbol("D"), N)


def test_config_parameter_binds_once_and_is_checked_after():
    text = ("dim B = 2, N = 16, M = 4, D = 8\nblock f(x: [B, T, D], y: [B, T, D], T = N) -> [B, T, D] {\n"
            "  return x + y\n}\n")
    assert out(text + "model m(a: [B, M, D], b: [B, M, D]) {\n  return f(a, b)\n}\n").shape == (B, M, D)
    with pytest.raises(seqdsl.SeqError, match=r"argument 'y' must have shape \[B, M, D\]"):
        seqdsl.check(text + "model m(a: [B, M, D], b: [B, N, D]) {\n  return f(a, b)\n}\n")
    # given explicitly, the config parameter is not inferred
    with pytest.raises(seqdsl.SeqError, match="must have shape"):
        seqdsl.check(text + "model m(a: [B, M, D], b: [B, M, D]) {\n  return f(a, b, T = N)\n}\n")


def test_parameter_count_of_two_transformer_layers_is_the_hand_formula():
    text = ("dim B, N = 16, D = 8, H = 2, L = 2\nblock layer(x: [B, N, D]) -> [B, N, D] {\n"
            "  q = rearrange(linear(x, D), \"b n (h d) -> b h n d\", h = H)\n"
            "  k = rearrange(linear(x, D), \"b n (h d) -> b h n d\", h = H)\n"
            "  v = rearrange(linear(x, D), \"b n (h d) -> b h n d\", h = H)\n"
            "  x = x + linear(rearrange(mix(q, k, v, mask = causal()), \"b h n d -> b n (h d)\"), D)\n"
            "  return x + mlp(layernorm(x), 4 * D)\n}\n"
            "model m(x: [B, N, D]) {\n  repeat L { x = layer(layernorm(x)) }\n  return x\n}\n")
    attention = 4 * (D * D + D)
    mlp = (4 * D * D + 4 * D) + (4 * D * D + D)
    norms = 2 * 2 * D
    per_layer = attention + mlp + norms
    checked = seqdsl.check(text)
    assert sympy.expand(checked.param_count - 2 * per_layer) == 0
    assert sympy.expand(seqdsl.check(text, L=5).param_count - 5 * per_layer) == 0
    names = {n.name for n in checked.graph.params}
    assert {"layers.0.layer.linear.weight", "layers.0.layer.linear_3.bias", "layers.1.layer.mlp.w2",
            "layers.1.layernorm.weight"} <= names


def test_parameter_names_follow_the_call_path():
    """docs/language.md: `q = linear(x, D)` inside `attn` inside `layers.3` gives `layers.3.attn.q.weight`."""
    text = ("dim N = 8, D = 4, L = 4\nblock attn(x: [N, D]) {\n  q = linear(x, D)\n  return q\n}\n"
            "model m(x: [N, D]) {\n  repeat L { x = attn(x) }\n  return x\n}\n")
    names = {n.name for n in seqdsl.check(text).graph.params}
    assert "layers.3.attn.q.weight" in names and "layers.0.attn.q.bias" in names
    shared = {n.name for n in seqdsl.check(text.replace("repeat L {", "repeat L shared {")).graph.params}
    assert shared == {"layers.attn.q.weight", "layers.attn.q.bias"}


def test_buffers_do_not_count_as_parameters(check_text):
    text = ("dim N = 8, D = 4\nmixer m(x: [N, D]) {\n  param w: [D] = normal(0.02, trainable = false)\n"
            "  param b: [D] = zeros()\n  return x * w + b\n}")
    assert check_text(text).param_count == dim_symbol("D")
    assert check_text(text, D=16).param_count == dim_symbol("D"), "sizes stay symbolic in the count"


def test_param_without_init_uses_the_default(check_text):
    checked = check_text("dim N = 8, D = 4\nmixer m(x: [N, D]) {\n  param w: [D]\n  return x * w\n}")
    assert checked.param_count == dim_symbol("D")


OUT_OF_RANGE = {
    "index": "x[:, 100]",
    "negative-index": "x[:, -100]",
    "slice-stop": "x[:, 0:100]",
    "negative-slice-start": "x[:, -100:]",
    "symbolic-negative-start": "x[:, -M:]",
}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_index_out_of_range_is_an_error(name):
    text = f"dim B = 2, N = 64, D = 4, M = 100\nmixer m(x: [B, N, D]) {{\n  return {OUT_OF_RANGE[name]}\n}}\n"
    with pytest.raises(seqdsl.SeqError, match="out of range"):
        seqdsl.check(text)
