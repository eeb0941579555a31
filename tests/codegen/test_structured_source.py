"""The generated source mirrors the file (codegen/torch/structure.py, scoped.py) and computes
exactly what the flat module of earlier releases computed: same state_dict keys, same
weights at a seed, same outputs, for every example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402
from codegen.torch.emit import emit_module  # noqa: E402
from codegen.torch.load import load_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = json.loads((Path(__file__).with_name("small_sizes.json")).read_text())
EXAMPLES = sorted(SMALL)
DOMAIN = {
    "mixers/selective_scan.seq": {2: lambda a: -a.exp()},
    "mixers/gla.seq": {3: torch.nn.functional.logsigmoid},
}


def _both(source, sizes: dict):
    """The structured and the flat module of ``source`` (sizes given: fixed)."""
    checked = seqdsl.check(source, **sizes)
    out = []
    for structured in (True, False):
        emitted = emit_module(checked.graph, checked.entry, checked.sizes, str(source), explicit=set(sizes),
                              concretized=checked.concretized, constraints=checked.constraints,
                              structured=structured)
        module = load_source(emitted.source, f"{checked.entry}_{'s' if structured else 'f'}")
        out.append((getattr(module, emitted.class_name)().eval(), emitted.source))
    return out


@pytest.mark.parametrize("name", EXAMPLES, ids=[e.replace("/", "-").removesuffix(".seq") for e in EXAMPLES])
def test_structured_module_equals_the_flat_one(name):
    (structured, source), (flat, _) = _both(ROOT / "examples" / name, SMALL[name])
    assert "written as one flat class" not in source
    assert list(structured.state_dict()) == list(flat.state_dict())
    for (key, a), b in zip(structured.state_dict().items(), flat.state_dict().values()):
        assert torch.equal(a, b), key
    inputs = list(flat.example_inputs())
    for index, fix in DOMAIN.get(name, {}).items():
        inputs[index] = fix(inputs[index])
    with torch.no_grad():
        a, b = structured(*inputs), flat(*inputs)
    # An equilibrium solve that stopped above its tol (DEQ at init) returns a point whose distance
    # to the fixed point is up to residual / (1 − ρ(∂f/∂z)): rounding differences move it freely.
    # Both then run the cell as a fixed stack of 4 applications, a function of the weights alone.
    if any(getattr(m, "residual", 0.0) > getattr(m, "tol", 1.0) for m in flat.modules()):
        for m in (structured, flat):
            m.fixed_points("unrolled", 4)
        with torch.no_grad():
            a, b = structured(*inputs), flat(*inputs)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


SHARED = """
dim B, N = 64, D = 16, L = 3
block layer(x: [B, N, D]) -> [B, N, D] {
  return x + mlp(layernorm(x), 2 * D, act = gelu)
}
model deep(tokens: int[B, N]) -> [B, N, D] {
  param table: [50, D] = normal(0.02)
  x = embed(tokens, table = table)
  repeat L shared {
    x = layer(x)
  }
  return x
}
"""


def test_a_shared_repeat_is_one_module_run_at_every_step():
    (structured, source), (flat, _) = _both(SHARED, {"N": 10})
    assert "self.layers = DeepLayer(gen)" in source and "for _ in range(3):" in source
    assert list(structured.state_dict()) == ["table", "layers.layer.layernorm.weight", "layers.layer.layernorm.bias",
                                             "layers.layer.mlp.w1", "layers.layer.mlp.b1", "layers.layer.mlp.w2",
                                             "layers.layer.mlp.b2"]
    tokens = torch.randint(0, 50, (2, 10))
    assert torch.equal(structured(tokens), flat(tokens))


def test_a_hybrid_picks_the_step_class_per_index():
    (model, source), _ = _both(ROOT / "examples/models/h3_hybrid.seq", dict(SMALL["models/h3_hybrid.seq"], L=9))
    assert "if i in (1, 8) else" in source      # attention at the 0-based layers 1 and 8 (safari's pile/h3.yaml)
    assert source.count("class H3Block(") == 1 and source.count("class AttentionBlock(") == 1
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[1] == kinds[8] != kinds[0] == kinds[2] == kinds[3] == kinds[7]
