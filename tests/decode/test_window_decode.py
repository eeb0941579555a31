"""Decoding through a suffix of the sequence (seqdsl/ir/decode_window.py): Perceiver AR's
latents are the last M positions, ``x[:, N - M:]``; the cross-attention's KV over every input
is cached, the slice keeps a window of its last M − 1 input rows, and the M-row layers below
it re-run on the window at each step. The output is [B, M, V]; a step returns the logits of
the new position — what a full forward at the new length gives for its last position."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="decoding needs torch")

import seqdsl  # noqa: E402
from codegen.decode.plan import plan as decode_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PERCEIVER = ROOT / "examples" / "models" / "perceiver_ar.seq"
# tiny: the test runs a full forward per step as the reference (3 prompts × 64 steps)
SIZES = {"D": 16, "H": 2, "M": 8, "L": 1, "V": 50}
STEPS, TOL = 64, 1e-4


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def model():
    return seqdsl.load(PERCEIVER, **SIZES).eval()


@pytest.mark.parametrize("prompt", [8, 11, 29])          # M, M + 3, a longer one
def test_perceiver_ar_steps_give_the_forward_at_each_length(model, prompt):
    tokens = torch.randint(0, 50, (2, prompt + STEPS), generator=torch.Generator().manual_seed(prompt))
    logits, state = model.prefill(tokens[:, :prompt])
    with torch.no_grad():
        assert _rel(logits, model(tokens[:, :prompt])) < TOL        # [B, M, V]: the last M positions
        worst = 0.0
        for t in range(prompt, prompt + STEPS):
            logits, state = model.step(tokens[:, t], state)
            full = model(tokens[:, :t + 1])
            assert logits.shape == (2, 50)
            worst = max(worst, _rel(logits, full[:, -1]))
    assert worst < TOL, f"after a prompt of {prompt}: relative error up to {worst:.2e}"
    assert state.position == prompt + STEPS


def test_the_plan_keeps_windows_and_reruns_the_latent_layers(model):
    kinds = [(path, kind, detail) for path, kind, detail in type(model).DECODE[1]]
    assert ("latents.slice", "window", "batch") in kinds                   # x[:, N - M:]
    assert ("latents.slice_1", "window", "shared") in kinds                # the rotary table's rows
    assert ("latents.y.mix", "softmax", "window") in kinds                 # M queries, KV of every input
    assert ("layers.0.self_layer.y.mix", "softmax", "rerun") in kinds      # attention among the M latents
    assert "rt.last_rows(x, 1, 8" in model.source and "rt.last_rows(c, 0, 8)" in model.source


def test_the_state_batches_and_a_short_prompt_is_refused(model):
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    _, state = model.prefill(tokens[:, :9])
    assert state["latents.slice"]["x"].shape == (3, 7, 16)                 # M − 1 rows of [B, N, D]
    assert state["latents.slice_1"]["x"].shape == (3, 7, 2)                # a table's rows, one copy per sequence
    one, _ = model.step(tokens[1:2, 9], state.select([1]))
    both, _ = model.step(tokens[:, 9], state)
    assert _rel(one, both[1:2]) < TOL
    with pytest.raises(seqdsl.SeqError, match="shorter than the window"):
        model.prefill(tokens[:, :7])


def test_analyze_decode_predicts_the_state(model):
    """`analyze --decode` (the same rules, seqdsl/analysis) against the module's state after a
    prefill of 20 and one step: windows, the KV cache of every input, nothing for the re-run
    latent layers."""
    tokens = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(2))
    _, state = model.prefill(tokens[:, :20])
    _, state = model.step(tokens[:, 20], state)
    d = seqdsl.analyze(PERCEIVER, **SIZES, B=2, N=21, decode=True).to_dict()["decode"]
    assert d["can_decode"], d["reason"]
    held = getattr(state, "used_nbytes", state.nbytes)          # a cache's rows, not spare capacity
    assert d["total"]["values"]["state_bytes"] == held, state.describe()
    assert d["total"]["big_o"]["time"] == "O(N)"                # the cross-attention's M queries over N keys


HEAD = "dim B, N = 64, M = 4, D = 8, V = 10, H = 2\nrequire M <= N\n"


def _plan(body: str):
    checked = seqdsl.check(HEAD + "model m(tokens: int[B, N]) -> [B, M, V] {\n  x = embed(tokens, V, D)\n"
                           + body + "\n}\n")
    return decode_plan(checked.graph, {"B", "N"})


@pytest.mark.parametrize("body,why", [
    ("  return linear(x[:, N - M:] * N, V)", "uses the length N as a number"),
    ("  q = rearrange(x[:, N - M:], \"b m (h d) -> b h m d\", h = H)\n"
     "  k = rearrange(x, \"b n (h d) -> b h n d\", h = H)\n"
     "  return linear(rearrange(mix(q, k, k, mask = causal(), norm = softmax), \"b h m d -> b m (h d)\"), V)",
     "causal(offset = N - M)"),
    ("  return linear(x[:, N - M - 1:N - 1], V)", "takes part of the N axis"),
])
def test_what_a_window_cannot_rerun_is_refused(body, why):
    p = _plan(body)
    assert not p.ok and why in p.reason, p.reason


def test_a_window_rerun_model_decodes_and_analysis_agrees():
    p = _plan("  y = x[:, N - M:]\n  q = rearrange(y, \"b m (h d) -> b h m d\", h = H)\n"
              "  return linear(rearrange(mix(q, q, q, mask = full(), norm = softmax), \"b h m d -> b m (h d)\"), V)")
    assert p.ok, p.reason                  # re-run whole on the window: even a full mask is exact
    assert [(s.kind, s.detail) for s in p.slots] == [("window", "batch"), ("softmax", "rerun")]
    text = HEAD + ("model m(tokens: int[B, N]) -> [B, M, V] {\n  x = embed(tokens, V, D)\n  y = x[:, N - M:]\n"
                   "  q = rearrange(y, \"b m (h d) -> b h m d\", h = H)\n  return linear(rearrange(mix(q, q, q, "
                   "mask = full(), norm = softmax), \"b h m d -> b m (h d)\"), V)\n}\n")
    d = seqdsl.analyze(text, B=1, decode=True).to_dict()["decode"]
    assert d["can_decode"], d["reason"]
    attention = next(r for r in d["layers"] if r["op"] == "mix/softmax")
    assert attention["state"] == "re-run on the last M rows" and attention["big_o"]["time"] == "O(1)"
    window = next(r for r in d["layers"] if r["op"] == "slice")
    assert window["values"]["state_bytes"] == 4 * 1 * 8 * 3          # B · D · (M − 1) floats
