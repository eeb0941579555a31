"""The Triton backend's modules are models too: loaded without B and N, they answer at other
lengths and batches as a Triton module compiled at those sizes does, forward and gradients
(kernels interpreted on a CPU; small sizes). The reference mixers are loaded with no size at
all, so their heads and widths are read at each call as well (a scale such as Dh ** -0.5 is
then applied around the kernel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the backends need torch")
pytest.importorskip("triton", reason="the Triton backend needs triton")

import seqdsl  # noqa: E402

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
SMALL = json.loads((ROOT / "tests" / "codegen" / "small_sizes.json").read_text())
DOMAIN = {
    "mixers/selective_scan.seq": {2: lambda a: -a.exp()},
    "mixers/gla.seq": {3: torch.nn.functional.logsigmoid},
}
# (file, sizes given to load): the mixers with none, two models with their widths
CASES = [
    ("mixers/softmax_attention.seq", {}),
    ("mixers/sliding_window.seq", {"W": 16}),
    ("mixers/retention.seq", {}),
    ("mixers/gla.seq", {"Dv": 8}),
    ("mixers/linear_attention.seq", {}),
    ("mixers/h3.seq", {"D": 8}),
    ("mixers/s4d.seq", {"D": 8}),
    ("mixers/selective_scan.seq", {"Dm": 4, "S": 4}),
    ("models/h3.seq", {"D": 16, "L": 1, "V": 20}),
    ("models/retnet.seq", {"D": 16, "F": 16, "H": 2, "L": 1, "V": 20}),
]


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _run(model, inputs):
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    model.zero_grad()
    out = model(*inputs)
    out.float().square().mean().backward()
    return out.detach(), [p.grad for p in model.parameters()] + [t.grad for t in inputs if t.is_floating_point()]


@pytest.mark.parametrize("name,sizes", CASES, ids=[c[0].replace("/", "-").removesuffix(".seq") for c in CASES])
def test_triton_module_answers_at_other_sizes(name, sizes):
    model = seqdsl.load(ROOT / "examples" / name, backend="triton", **sizes)
    assert any(c.backend == "triton" for c in model.choices), [c.note for c in model.choices]
    assert "N" in model.RUNTIME
    for n, b in ((20, 1), (36, 2)):
        fixed = {d: model.DEFAULTS[d] if d in model.DEFAULTS else 4 for d in model.RUNTIME} | {"B": b, "N": n}
        fixed = {d: (v if d in ("B", "N") else 2 if d == "H" else min(v, 8)) for d, v in fixed.items()}
        reference = seqdsl.load(ROOT / "examples" / name, backend="triton", **sizes, **fixed)
        reference.load_state_dict(model.state_dict())
        inputs = list(reference.example_inputs())
        for index, fix in DOMAIN.get(name, {}).items():
            inputs[index] = fix(inputs[index])
        out, grads = _run(model, inputs)
        ref_out, ref_grads = _run(reference, inputs)
        assert _rel(out, ref_out) < 1e-5
        for g, r in zip(grads, ref_grads):
            if g is None or r is None:
                assert g is None and r is None
                continue
            assert _rel(g, r) < 1e-4
