"""Weights and layers keep the names of the .seq file even where the generated module's class
already has that attribute (a weight called ``w``, ``step``, ``train``, ``training``, ``to``):
the module registers them in nn.Module's tables and reads them by path, so it builds, runs,
and each name holds its own tensor."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch")

import seqdsl  # noqa: E402

NAMES = ["w", "step", "train", "to", "prefill", "forward", "state_dict", "aux_loss"]

SOURCE = """dim B, N = 16, D = 8
block {block}(x: [B, N, D]) -> [B, N, D] {{
  param {name}: [D] = normal(1)
  return x * {name}
}}
model m(x: [B, N, D]) -> [B, N, D] {{
  return {block}(x) + {block}(x)
}}
"""


@pytest.mark.parametrize("name", NAMES)
def test_a_weight_named_like_a_module_attribute(name):
    block = name if name not in ("to",) else "blk"
    model = seqdsl.load(SOURCE.format(name=name, block=block))
    params = dict(model.named_parameters())
    assert len(params) == 2 and all(key.endswith("." + name) for key in params), sorted(params)
    x = torch.randn(2, 16, 8)
    weights = list(params.values())
    expected = x * weights[0] + x * weights[1]
    assert torch.equal(model(x), expected)
    assert callable(model.state_dict) and callable(model.train)     # the class's own still work
    model.train(False)
    assert set(model.state_dict()) == set(params)


def test_training_is_refused_with_its_position():
    """``training`` is the flag train()/eval() set on every torch module: no weight or layer
    can hold it, so the file gets a positioned error instead of a module that breaks later."""
    with pytest.raises(seqdsl.SeqError, match="'training' cannot name") as err:
        seqdsl.load(SOURCE.format(name="training", block="blk"))
    assert err.value.line == 3
