"""Every example loads with the PyTorch backend and runs forward and backward at small sizes;
what ``compile`` writes is exactly what ``load`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Small sizes at which every example runs (each file's own constraints hold at them).
SMALL = json.loads((Path(__file__).with_name("small_sizes.json")).read_text())
EXAMPLES = sorted(p.relative_to(ROOT / "examples").as_posix() for p in (ROOT / "examples").glob("*/*.seq"))


# Functional mixers whose inputs have a domain (random normals are outside it):
# selective scan's A is negative (Mamba's −exp(A_log)); GLA's gate is a log-probability.
DOMAIN = {
    "mixers/selective_scan.seq": {2: lambda a: -a.exp()},
    "mixers/gla.seq": {3: torch.nn.functional.logsigmoid},
}


def test_every_example_has_small_sizes():
    assert sorted(SMALL) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES, ids=[e.replace("/", "-").removesuffix(".seq") for e in EXAMPLES])
def test_example_runs_forward_and_backward(name):
    sizes = SMALL[name]
    model = seqdsl.load(ROOT / "examples" / name, **sizes)
    inputs = list(model.example_inputs(**sizes))
    for index, fix in DOMAIN.get(name, {}).items():
        inputs[index] = fix(inputs[index])
    inputs = [t.requires_grad_(True) if t.is_floating_point() else t for t in inputs]
    out = model(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    checked = seqdsl.check(ROOT / "examples" / name, **sizes)
    for o, t in zip(outs, checked.outputs):
        expected = tuple(int(checked.value(d).subs({s: sizes.get(str(s), 2) for s in checked.value(d).free_symbols}))
                         for d in t.shape)
        assert tuple(o.shape) == expected
        assert torch.isfinite(o).all(), "non-finite output"
    # a linear term too: a zero-initialised output layer (the Sparse Transformer's logits) gives
    # zero gradients under a purely quadratic loss at its outputs' zero
    loss = sum(o.float().square().mean() + o.float().mean() for o in outs if o.is_floating_point())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad] + \
        [t.grad for t in inputs if t.is_floating_point()]
    if grads:
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the weights"
        assert all(g is None or torch.isfinite(g).all() for g in grads), "non-finite gradient"


def test_compile_writes_what_load_runs(tmp_path):
    name = "mixers/softmax_attention.seq"
    compiled = seqdsl.compile(ROOT / "examples" / name, tmp_path, **SMALL[name])
    model = seqdsl.load(ROOT / "examples" / name, **SMALL[name])
    assert compiled.path.read_text() == model.source
    assert compiled.choices and compiled.choices[0].algorithm in compiled.choices[0].estimates


# Per example at its small sizes: every state_dict key with its shape and the sum and sum of
# squares of its values at seed 0, as the flat modules of the first releases made them
# (written once by a script; never regenerated to make a change pass). A module structured
# differently must give the same names and the same numbers: nothing trained is lost.
WEIGHTS = json.loads((Path(__file__).with_name("weights_seed0.json")).read_text())


@pytest.mark.parametrize("name", EXAMPLES, ids=[e.replace("/", "-").removesuffix(".seq") for e in EXAMPLES])
def test_same_seed_gives_the_same_weights(name):
    model = seqdsl.load(ROOT / "examples" / name, **SMALL[name])
    state = model.state_dict()
    assert sorted(state) == sorted(WEIGHTS[name])
    for key, (shape, total, squares) in WEIGHTS[name].items():
        value = state[key].double()
        assert list(value.shape) == shape, key
        assert abs(float(value.sum()) - total) <= 1e-5 * max(1.0, abs(total)), key
        assert abs(float(value.square().sum()) - squares) <= 1e-5 * max(1.0, squares), key
