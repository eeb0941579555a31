"""Elementwise work folded into mixer calls (codegen/fuse.py), and the options of ``load``:
per-layer algorithm overrides and ``torch.compile``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402
from codegen import fuse  # noqa: E402
from seqdsl.ir.graph import OpKind  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = json.loads((Path(__file__).with_name("small_sizes.json")).read_text())

GATED = """
dim B = 2, H = 2, N = 24, F = 4, Dv = 3
mixer m(q: [B, H, N, F], k: [B, H, N, F], v: [B, H, N, Dv], r: [B, H, N, 1], c: [B, H, 1, F],
        g: [B, H, N, F]) -> [B, H, N, Dv] {
  gate = GATE
  return mix(q, k, v, mask = causal() & decay(log = gate), norm = none)
}
"""


def _mix(checked):
    return next(n for n in checked.graph.nodes(OpKind.MIX))


@pytest.mark.parametrize("gate, folds", [("r * c", True), ("c * r", True), ("g * r", False), ("g * g", False)])
def test_outer_gate_folds_only_rank_one_products(check_text, gate, folds):
    checked = check_text(GATED.replace("GATE", gate))
    g = checked.graph
    fold = fuse.outer_gate(g, _mix(checked), fuse.readers(g))
    assert (fold is not None) == folds
    if folds:
        assert {g.node(fold.args["gate_rate"].node).name, g.node(fold.args["gate_channel"].node).name} == {"r", "c"}


def test_a_gate_read_elsewhere_is_not_folded(check_text):
    src = GATED.replace("gate = GATE\n  return mix(q, k, v,", "gate = r * c\n  return gate[:, :, :, 0:Dv] + mix(q, k, v,")
    checked = check_text(src)
    assert fuse.outer_gate(checked.graph, _mix(checked), fuse.readers(checked.graph)) is None


def test_folded_gate_computes_the_same_as_the_materialised_one():
    model = seqdsl.load(GATED.replace("GATE", "r * c"))
    assert "OuterGate(" in model.source and "* c" not in model.source.split("def forward", 1)[1]
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 24, 4), torch.randn(2, 2, 24, 4), torch.randn(2, 2, 24, 3)
    r, c = torch.rand(2, 2, 24, 1), -torch.rand(2, 2, 1, 4)
    from codegen.linear.torch_impl import linear_attention

    want = linear_attention(q, k, v, decay=r * c, log_decay=True, algorithm="quadratic")
    got = model(q, k, v, r, c, torch.zeros(2, 2, 24, 4))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_toeplitz_gates_of_h3():
    checked = seqdsl.check(ROOT / "examples" / "mixers" / "h3.seq")
    g = checked.graph
    diag = next(n for n in g.nodes(OpKind.MIX) if n.name == "diag_ssm")
    fold = fuse.toeplitz_gates(g, diag, fuse.readers(g))
    assert fold is not None and set(fold.args) == {"pre", "skip", "post"}
    assert g.node(fold.args["skip"].node).name == "D_diag"
    assert g.node(fold.args["post"].node).name == "q"
    assert fold.result == max(n.id for n in g.nodes() if n.kind == OpKind.BINARY)   # the last product


def test_post_gate_computed_after_the_mix_is_not_folded(check_text):
    checked = check_text("""
dim B = 2, N = 16, D = 4
mixer m(v: [B, N, D]) -> [B, N, D] {
  y = mix(v = v, mask = toeplitz(ssm(diag, state = 4)))
  return y * (y + v)
}
""")
    g = checked.graph
    fold = fuse.toeplitz_gates(g, _mix(checked), fuse.readers(g))
    assert fold is None or "post" not in fold.args


# ---- load options ------------------------------------------------------------------------

RETNET = ROOT / "examples" / "models" / "retnet.seq"


def test_algorithms_override_by_path_and_glob():
    sizes = SMALL["models/retnet.seq"]
    auto = seqdsl.load(RETNET, **sizes)
    paths = [c.path for c in auto.choices]
    forced = seqdsl.load(RETNET, algorithms={paths[0]: "recurrent"}, **sizes)
    assert [c.algorithm for c in forced.choices][0] == "recurrent" and forced.choices[0].forced
    every = seqdsl.load(RETNET, algorithms={"layers.*": "quadratic"}, **sizes)
    assert {c.algorithm for c in every.choices} == {"quadratic"}
    every.load_state_dict(auto.state_dict())
    x = auto.example_inputs(**sizes)
    assert torch.allclose(every(*x), auto(*x), rtol=1e-4, atol=1e-5)


def test_unknown_layer_in_algorithms_is_a_clear_error():
    with pytest.raises(seqdsl.SeqError, match="no mixer matches '?nowhere"):
        seqdsl.load(RETNET, algorithms={"nowhere": "chunked"}, **SMALL["models/retnet.seq"])


@pytest.mark.slow
def test_torch_compile_gives_the_same_result():
    sizes = SMALL["mixers/retention.seq"]
    ref = seqdsl.load(ROOT / "examples" / "mixers" / "retention.seq", **sizes)
    model = seqdsl.load(ROOT / "examples" / "mixers" / "retention.seq", torch_compile=True, **sizes)
    model.load_state_dict(ref.state_dict())
    x = ref.example_inputs(**sizes)
    assert torch.allclose(model(*x), ref(*x), rtol=1e-4, atol=1e-5)
