"""Every example checks at its default sizes; the reference mixers of SPEC §6 have the
entries and inputs the spec fixes; the 40 systems of SPEC §7 exist."""

from __future__ import annotations

from pathlib import Path

import pytest

import seqdsl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.seq"))

MIXERS = {
    "softmax_attention": ("softmax_attention", ["q", "k", "v"]),
    "sliding_window": ("sliding_window_attention", ["q", "k", "v"]),
    "linear_attention": ("linear_attention", ["q", "k", "v"]),
    "retention": ("retention", ["q", "k", "v"]),
    "gla": ("gla", ["q", "k", "v", "g"]),
    "s4d": ("s4d", ["u", "log_dt", "log_A_real", "A_imag", "C_re", "C_im", "D_skip"]),
    "selective_scan": ("selective_scan", None),
    "h3": ("h3", ["q", "k", "v"]),
}
MODELS = ("transformer_encoder transformer_decoder vit longformer bigbird local_attention sparse_transformer "
          "linformer performer linear_transformer spectral_kernel reformer sinkhorn synthesizer luna "
          "transformer_ls perceiver_ar block_recurrent s4 s4d dss dlr s5 h3 h3_hybrid gss mega mega_chunk spade "
          "hyena retnet gla mamba switch_moe deq context_pool wide_single_layer hierarchical memory_transformer "
          "pixelfly").split()


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}-{p.stem}" for p in EXAMPLES])
def test_example_checks(path):
    checked = seqdsl.check(path)
    assert checked.outputs
    text = path.read_text()
    assert text.startswith("#"), "each example starts with a comment header naming what it follows"


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_reference_mixer_signature(name):
    entry, inputs = MIXERS[name]
    checked = seqdsl.check(ROOT / "examples" / "mixers" / f"{name}.seq")
    assert checked.entry == entry and checked.kind == "mixer"
    if inputs is not None:
        assert [n for n, _t in checked.inputs] == inputs
    assert checked.mixers, "a reference mixer is written with mix(...)"


def test_all_systems_exist_and_are_models():
    assert sorted(p.stem for p in (ROOT / "examples" / "models").glob("*.seq")) == sorted(MODELS)
    assert len(MODELS) == 40
    for name in MODELS:
        checked = seqdsl.check(ROOT / "examples" / "models" / f"{name}.seq")
        assert checked.kind == "model", name
