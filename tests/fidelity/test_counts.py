"""Parameter counts against published or released configurations (issue 12, FIDELITY.md).

Each example is checked at its own defaults (the configuration its header claims) and the
checker's symbolic ``param_count`` is evaluated there; the big model is never instantiated.
The expected number is either published (a model card, a paper) or counted here from the
weight shapes of the released code, written out term by term so that a reader can audit it.
Where the file deliberately leaves out weights that the released model stores but never
reads (padding rows of position tables), the test says how many and why.

The checks share the session cache of ``checked_example`` with tests/test_examples.py, so in
the full suite they cost almost nothing; alone they take the time of checking each model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"


def layernorm(d: int) -> int:
    return 2 * d


def dense(d_in: int, d_out: int, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def roberta_layer(d: int, f: int) -> int:
    """One BERT/RoBERTa post-norm layer (HF RobertaLayer): Q, K, V, O with biases, two
    LayerNorms, the GELU MLP."""
    return 4 * dense(d, d) + layernorm(d) + dense(d, f) + dense(f, d) + layernorm(d)


def reformer_enwik8() -> int:
    """google/trax reformer_enwik8.gin with the paper's sizes (d_model 1024, d_ff 4096,
    8 heads of 128, 12 layers, vocabulary 258, axial (128, 512) x (256, 768)).
    efficient_attention.py: SelfAttention has w_q, w_k, w_v, w_o and LSHSelfAttention
    w_q (shared QK), w_v, w_o, no biases; reformer.py: each half-residual starts with a
    LayerNorm, FeedForward = LN, Dense(d_ff), ReLU, Dense(d_model); the head is
    LayerNorm(2·d_model) and Dense(2·d_model -> vocab)."""
    d, f, v = 1024, 4096, 258
    feed_forward = layernorm(d) + dense(d, f) + dense(f, d)
    local = layernorm(d) + 4 * d * d + feed_forward          # layers 0, 1, 3, 4, 5, 7, 8, 9, 11
    lsh = layernorm(d) + 3 * d * d + feed_forward             # layers 2, 6, 10
    embeddings = v * d + 128 * 256 + 512 * 768
    return embeddings + 9 * local + 3 * lsh + layernorm(2 * d) + dense(2 * d, v)


def hat_p1(classes: int) -> int:
    """coastalcph/hierarchical-transformers, HATForSequenceClassification at layout p1
    (convert_roberta_to_htf.py): RoBERTa-base sizes (vocabulary 50265, D 768, F 3072),
    128-token segments, 32 segments; position table 128 + 2 rows, one token type, embedding
    LayerNorm; 12 sentence-encoder layers, 4 document-encoder layers; the document position
    table (33 rows) is tied across layers (HATEncoder._tie_weights), counted once; HATPooler
    dense and the classifier."""
    d, f = 768, 3072
    embeddings = 50265 * d + 130 * d + 1 * d + layernorm(d)
    return embeddings + 16 * roberta_layer(d, f) + 33 * d + dense(d, d) + dense(d, classes)


def fla_gla_1_3b() -> int:
    """fla-org/flash-linear-attention GLA at the 1.3B sizes (D 2048, 24 layers, 4 heads,
    expand_k 0.5, expand_v 1, gate_low_rank_dim 16, hidden_ratio 4, vocabulary 32000, untied):
    q_proj, k_proj [D/2], v_proj, g_proj, o_proj [D], gk_proj Linear(D, 16, no bias) +
    Linear(16, D/2), the per-head RMSNorm weight [D/H]; GLAMLP gate/up/down at
    256·⌈int(D·4·2/3)/256⌉ = 5632, no biases; two RMSNorms per block, a final RMSNorm."""
    d, v, h = 2048, 32000, 4
    dk = d // 2
    f = 256 * -(-int(d * 4 * 2 / 3) // 256)
    assert f == 5632
    attention = 2 * d * dk + 3 * d * d + dense(d, 16, False) + dense(16, dk) + d // h
    block = attention + 3 * d * f + 2 * d
    return v * d + 24 * block + d + v * d


def longformer_base(classes: int) -> int:
    """allenai/longformer-base-4096: the model card's LongformerModel has 148,659,456
    parameters (RoBERTa-base with 4098 positions and a second Q/K/V per layer for the global
    rows, plus the pooler). LongformerForSequenceClassification drops the pooler and adds its
    head: dense(768, 768) and out_proj(768, classes)."""
    d = 768
    model = 148_659_456
    assert model == (50265 * d + 4098 * d + d + layernorm(d)
                     + 12 * (roberta_layer(d, 3072) + 3 * dense(d, d)) + dense(d, d))
    return model - dense(d, d) + dense(d, d) + dense(d, classes)


def vit_b16() -> int:
    """ViT-B/16 at 224 with the 1000-class head: 86,567,656 (timm vit_base_patch16_224;
    Dosovitskiy et al. Table 1 rounds it to 86M)."""
    return 86_567_656


def mamba_130m() -> int:
    """state-spaces/mamba-130m: 129,135,360 (24 layers of D 768, d_inner 1536, d_state 16,
    dt_rank 48, conv 4, vocabulary padded to 50280, output tied to the embedding)."""
    d, e, s, r = 768, 1536, 16, 48
    layer = dense(d, 2 * e, False) + e * 4 + e + dense(e, r + 2 * s, False) + dense(r, e) + e * s + e \
        + dense(e, d, False) + d
    assert 50280 * d + 24 * layer + d == 129_135_360
    return 129_135_360


# file -> (expected count at the file's defaults, weights the file leaves out on purpose, why)
CASES = {
    "reformer": (reformer_enwik8(), 0, ""),
    "hierarchical": (hat_p1(10), 3 * 768,
                     "unread rows: 2 padding-offset rows of the token position table and the "
                     "padding row of the segment position table"),
    "gla": (fla_gla_1_3b(), 0, ""),
    "longformer": (longformer_base(2), 3 * 768,
                   "2 padding-offset rows of the position table and the one-row token-type "
                   "embedding (a constant) are not written"),
    "vit": (vit_b16(), 0, ""),
    "mamba": (mamba_130m(), 0, ""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_at_the_claimed_configuration(name, checked_example):
    expected, left_out, why = CASES[name]
    checked = checked_example(MODELS / f"{name}.seq")
    count = int(checked.value(checked.param_count))
    assert count + left_out == expected, (
        f"{name}: the file has {count:,} parameters at its defaults, the released/published "
        f"configuration {expected:,}" + (f" ({left_out:,} left out: {why})" if left_out else ""))


# Published sizes given only in whole millions (name -> (millions as published, where)):
# the file's count must be that many millions and a fraction (papers truncate: 153.7M is
# "153M").
# (H3, H3-hybrid, Mega and Mega-chunk are counted exactly in test_ssm_counts.py.)
ROUNDED = {
    "hyena": (153, "Poli et al. 2023, Hyena-153M on the Pile"),
}


@pytest.mark.parametrize("name", sorted(ROUNDED))
def test_parameter_count_rounds_to_the_published_size(name, checked_example):
    millions, source = ROUNDED[name]
    checked = checked_example(MODELS / f"{name}.seq")
    count = int(checked.value(checked.param_count))
    assert millions <= count / 1e6 < millions + 1, f"{name}: {count:,} parameters; {source}"


def test_the_analysis_reports_the_checker_count(checked_example):
    """The counts above are the checker's; the cost report's total is the same number."""
    import sympy

    import seqdsl

    path = MODELS / "transformer_ls.seq"
    checked = checked_example(path)
    report = seqdsl.analyze(path).to_dict()
    expr = sympy.sympify(report["total"]["param_count"])
    value = expr.subs({s: report["sizes"][s.name] for s in expr.free_symbols})
    assert int(value) == int(checked.value(checked.param_count)) == 363_010
