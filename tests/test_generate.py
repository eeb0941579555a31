"""`seqdsl generate` and `seqdsl.generate`: prompt encoding, sampling, checkpoints, the
state it reports and the models that cannot decode (tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import seqdsl
from seqdsl.cli import app
from seqdsl.generate import decode_text, encode_prompt, sample

ROOT = Path(__file__).resolve().parents[1]
MAMBA = ROOT / "examples" / "models" / "mamba.seq"
TINY = dict(D=16, L=1, V=256, S=4)     # a byte-level Mamba, E = 32 inner channels
runner = CliRunner()


def test_prompt_encoding():
    assert encode_prompt("hé", 256) == ([104, 195, 169], True)
    assert encode_prompt("3, 1 2", 10) == ([3, 1, 2], False)
    with pytest.raises(seqdsl.SeqError, match="token ids"):
        encode_prompt("hello", 10)
    with pytest.raises(seqdsl.SeqError, match="outside the vocabulary"):
        encode_prompt("3 12", 10)
    with pytest.raises(seqdsl.SeqError, match="empty"):
        encode_prompt("", 300)


def test_byte_decoding_replaces_what_is_not_utf8():
    assert decode_text(list("hé".encode())) == "hé"
    assert decode_text([104, 0xC3]) == "h\ufffd"            # a sequence cut short
    assert decode_text([104, 300, 105]) == "h\ufffdi"        # an id that is not a byte


def test_sampling():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 5.0, 1.0, 4.0])
    assert sample(logits, 0.0, None, g) == 1
    draws = {sample(logits, 10.0, 2, g) for _ in range(200)}
    assert draws == {1, 3}                                    # top-2 only, both drawn at a high temperature


def test_generate_greedy_equals_the_full_forward(tmp_path):
    """The greedy continuation from prefill + steps is the argmax of the full forward over
    prompt + continuation, position by position; a checkpoint's weights are the ones used."""
    torch.manual_seed(1)
    model = seqdsl.load(MAMBA, **TINY)
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    out = seqdsl.generate(MAMBA, "abc", 6, checkpoint=ckpt, temperature=0, seed=5, **TINY)
    assert out.byte_level and out.prompt_ids == [97, 98, 99] and len(out.new_ids) == 6 and out.steps == 5
    ids = torch.tensor([out.prompt_ids + out.new_ids])
    with torch.no_grad():
        logits = model(ids)
    assert logits[0, 2:-1].argmax(-1).tolist() == out.new_ids
    # Mamba's state: per layer [E, S] of the scan and the last W − 1 = 3 inputs of the conv
    assert out.state_bytes == out.state_bytes_prompt == 4 * (32 * 4 + 32 * 3)
    report = seqdsl.analyze(MAMBA, decode=True, **TINY).to_dict()["decode"]
    assert report["total"]["values"]["state_bytes"] == out.state_bytes
    assert out.prefill_tokens_per_s > 0 and out.step_tokens_per_s > 0


def test_checkpoint_that_does_not_fit(tmp_path):
    ckpt = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(2)}, ckpt)
    with pytest.raises(seqdsl.SeqError, match="does not fit the model"):
        seqdsl.generate(MAMBA, "a", 1, checkpoint=ckpt, **TINY)
    with pytest.raises(seqdsl.SeqError, match="no such file"):
        seqdsl.generate(MAMBA, "a", 1, checkpoint=tmp_path / "missing.pt", **TINY)


def test_cli_prints_text_speed_and_state():
    result = runner.invoke(app, ["generate", str(MAMBA), "--prompt", "hi", "--tokens", "4", "--seed", "3",
                                 "--temperature", "0.7", "--top-k", "5",
                                 *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]])
    assert result.exit_code == 0, result.output
    assert "prefill: 2 tokens" in result.output and "tokens/s" in result.output
    assert "step:    3 tokens" in result.output and "state:" in result.output


BIDIRECTIONAL = """dim B, N = 16, D = 8, V = 300
model bidirectional(tokens: int[B, N]) -> [B, N, V] {
  x = rearrange(embed(tokens, V, D), "b n d -> b 1 n d")
  y = mix(x, x, x, score = dot(scale = 1), mask = full(), norm = softmax)
  return linear(rearrange(y, "b 1 n d -> b n d"), V)
}
"""


def test_cli_refuses_a_model_that_cannot_decode(tmp_path):
    """A language model whose mask lets a token see later ones: exit 1 with the reason, as
    `analyze --decode` says it."""
    src = tmp_path / "bidirectional.seq"
    src.write_text(BIDIRECTIONAL)
    result = runner.invoke(app, ["generate", str(src), "--prompt", "hi", "--tokens", "2"])
    assert result.exit_code == 1
    assert "cannot decode" in result.output and "Traceback" not in result.output
    report = seqdsl.analyze(src, decode=True).to_dict()["decode"]
    assert not report["can_decode"] and "no causal term" in report["reason"]
    result = runner.invoke(app, ["generate", str(src), "--prompt", "hi", "--set", "N=8"])
    assert result.exit_code == 1 and "leave N out of --set" in result.output
    classifier = ROOT / "examples" / "models" / "transformer_encoder.seq"
    result = runner.invoke(app, ["generate", str(classifier), "--prompt", "1 2", "--tokens", "2"])
    assert result.exit_code == 1 and "logits [B, N, V]" in result.output
