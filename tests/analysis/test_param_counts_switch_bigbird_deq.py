"""Parameter counts at the claimed configurations, from the checker's symbolic param_count
(the trained weights; the analysis reports the same total) evaluated at each example's
default sizes (no model is instantiated), against the count of the released configuration
written out here term by term."""

from __future__ import annotations

from pathlib import Path

import seqdsl

ROOT = Path(__file__).resolve().parents[2]


def _count(name: str) -> int:
    checked = seqdsl.check(ROOT / "examples" / "models" / name)
    return int(checked.value(checked.param_count))


def test_switch_base_128():
    """Switch-Base, 128 experts: 7.4B parameters (Fedus et al. 2021, Table 9); the released
    google/switch-base-128 configuration gives exactly 7,415,217,408."""
    d, f, h, layers, v, e, buckets = 768, 3072, 12, 12, 32128, 128, 32
    attn = 4 * d * d                       # q, k, v, o without biases
    dense = 2 * d * f                      # wi, wo without biases
    sparse = e * dense + e * d             # experts + router [E, D]
    half = layers // 2                     # every other layer sparse (sparse step 2)
    encoder = layers * (attn + d) + half * (dense + d) + half * (sparse + d) + d + h * buckets
    decoder = layers * 2 * (attn + d) + half * (dense + d) + half * (sparse + d) + d + h * buckets
    released = v * d + encoder + decoder   # one embedding: inputs of both stacks and the output
    assert released == 7_415_217_408
    assert _count("switch_moe.seq") == released
    assert round(released / 1e9, 1) == 7.4


def test_bigbird_roberta_base():
    """google/bigbird-roberta-base's BigBirdModel: 127,468,800 parameters from its config
    (embeddings 50358 and 4096 positions, 2 token types, 12 layers of 768/3072, pooler). The
    example folds the token-type table into the positions (−2·768) and adds the classifier
    (768·2 + 2)."""
    d, f, layers, v, n, classes = 768, 3072, 12, 50358, 4096, 2
    layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
    released = v * d + n * d + 2 * d + 2 * d + layers * layer + (d * d + d)
    assert released == 127_468_800
    assert _count("bigbird.seq") == released - 2 * d + (d * classes + classes)


def test_deq_transformer_wt103():
    """locuslab/deq wt103_deq_transformer.sh: d_model 700, 10 heads of 70, d_inner 48000. The
    released cell holds qkv_net (3D², no bias), r_net (D², no bias), r_w_bias and r_r_bias
    (2·H·Dh), o_net (D² + D), ff1 (D·F + F), ff2 (F·D + D), non-affine layer norms, and the
    model inject_conv (3D² + 3D). The example swaps Transformer-XL's position terms (r_net,
    r_w_bias, r_r_bias) for a T5-style table (32·H) and the adaptive embedding/softmax for
    one tied table [V, D] with an output bias [V]."""
    d, h, f, v = 700, 10, 48000, 267735
    cell = 3 * d * d + d * d + 2 * d + d * d + d + d * f + f + f * d + d
    inject = 3 * d * d + 3 * d
    released_core = cell + inject
    ours_core = released_core - (d * d + 2 * d) + 32 * h
    assert _count("deq.seq") == ours_core + v * d + v
