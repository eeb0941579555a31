"""`analyze complexity --decode`: per-token FLOPs and state bytes, checked against the
formulas of the papers (RetNet's H·Dk·Dv per layer, Mamba's D_inner·S + D_inner·(d_conv − 1),
a Transformer's 2·N·D per layer, …), the refusals, the crossover and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sympy
import torch

import seqdsl
from seqdsl.analysis.schema import REPORT_SCHEMA

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the report's JSON")

E = 4   # bytes per fp32 element


def decode(path: str, **sizes) -> dict:
    return seqdsl.analyze(path, decode=True, **sizes).to_dict()["decode"]


def value(d: dict, key: str = "state_bytes") -> float:
    return d["total"]["values"][key]


def stateful(d: dict) -> list[dict]:
    return [r for r in d["layers"] if r["state"] != "-"]


def test_retention_state_is_h_dk_dv():
    """RetNet: one [Dk, Dv] state per head (Sun et al. 2023, eq. 1): 5·Dk·Dv FLOPs per token
    and head (decay 1, kᵀv added 2, q·S 2)."""
    d = decode("examples/mixers/retention.seq", B=3, H=4, Dh=16, N=1000)
    assert d["can_decode"]
    assert value(d) == E * 3 * 4 * 16 * 16
    (row,) = stateful(d)
    assert row["big_o"] == {"time": "O(1)", "memory": "O(1)"}
    assert row["values"]["flops"] == 3 * 4 * 5 * 16 * 16


def test_linear_attention_keeps_the_normaliser():
    d = decode("examples/mixers/linear_attention.seq", B=1, H=2, Dh=8, N=100)
    assert value(d) == E * 2 * (8 * 8 + 8)


def test_mamba_state_is_inner_times_state_plus_conv_taps():
    """Mamba (Gu & Dao 2023; mamba_ssm's inference cache): per layer a [D_inner, S] SSM state
    and the last d_conv − 1 inputs of the depthwise convolution."""
    D, L, S, W = 32, 3, 16, 4
    d = decode("examples/models/mamba.seq", B=1, D=D, L=L, V=64, S=S, W=W, N=4096)
    inner = 2 * D
    assert d["can_decode"]
    assert value(d) == E * L * (inner * S + inner * (W - 1))
    assert d["total"]["big_o"] == {"time": "O(1)", "memory": "O(1)"}
    assert d["crossover"] is None


def test_transformer_kv_cache_and_crossover():
    """A KV cache of 2·N·D elements per layer; the per-token cost grows as N, and the
    crossover N* solves attention(N) = rest for N."""
    D, H, L, F, V = 64, 4, 2, 128, 256
    d = decode("examples/models/transformer_decoder.seq", B=1, D=D, H=H, L=L, F=F, V=V, N=512)
    assert value(d) == E * L * 2 * 512 * D
    assert d["total"]["big_o"] == {"time": "O(N)", "memory": "O(N)"}
    c = d["crossover"]
    attn = sympy.sympify(c["attention_flops"])
    rest = sympy.sympify(c["rest_flops"])
    n = next(s for s in attn.free_symbols if s.name == "N")
    sizes = {s: {"B": 1, "D": D, "H": H, "F": F, "V": V}[s.name] for s in (attn + rest).free_symbols if s != n}
    # per layer and token: q·K and p·V over N keys of width D, 5 elementwise per key and head
    assert sympy.expand(attn.xreplace(sizes) - L * (4 * D + 5 * H) * n) == 0
    star = c["value"]
    assert star > 0
    assert float((attn - rest).xreplace(sizes).xreplace({n: star})) == pytest.approx(0, abs=1e-6 * star)
    formula = sympy.sympify(c["formula"])
    assert float(formula.xreplace({s: sizes[s] for s in formula.free_symbols if s in sizes})) == pytest.approx(star)


def test_sliding_window_keeps_w_keys():
    """causal() & window(W): the next query reads W keys, W − 1 of them kept between steps."""
    d = decode("examples/mixers/sliding_window.seq", B=1, H=2, Dh=8, W=32, N=4096)
    (row,) = stateful(d)
    assert row["values"]["state_bytes"] == E * 2 * 31 * (8 + 8)
    assert row["values"]["flops"] == 2 * 32 * (2 * 8 + 2 * 8 + 5)
    assert row["big_o"]["memory"] == "O(1)"
    assert "ring buffer" in row["state"]
    assert d["crossover"] is None


def test_h3_shift_register_and_complex_state():
    """H3: the shift SSM keeps its S last inputs per channel; the diagonal SSM S/2 complex
    modes per channel (one of each conjugate pair): S reals."""
    d = decode("examples/mixers/h3.seq", B=2, D=8, N=100, shift_state=4, diag_state=16)
    shift, diag = stateful(d)
    assert shift["values"]["state_bytes"] == E * 2 * 8 * 4
    assert diag["values"]["state_bytes"] == E * 2 * 8 * 16
    assert d["total"]["big_o"]["memory"] == "O(1)"


@pytest.mark.parametrize("path, why", [
    ("examples/mixers/softmax_attention.seq", "no causal term"),
])
def test_cannot_decode_says_why(path, why):
    d = decode(path, causal=0)
    assert not d["can_decode"] and why in d["reason"]


def test_bidirectional_ssm_and_a_classifier_refuse():
    layer = seqdsl.analyze("examples/models/s4d.seq", "s4d_layer", D=8, N=64, decode=True).decode
    ok, why = layer.can_decode
    assert not ok and "bidirectional" in why and "s4d_conv" in why
    d = decode("examples/models/s4d.seq", L=1, D=8, N=64)
    assert not d["can_decode"] and "no N axis" in d["reason"]


def test_json_keeps_every_key_and_validates():
    plain = seqdsl.analyze("examples/mixers/retention.seq", N=256).to_dict()
    with_decode = seqdsl.analyze("examples/mixers/retention.seq", N=256, decode=True).to_dict()
    assert "decode" not in plain
    assert {k: v for k, v in with_decode.items() if k != "decode"} == plain
    jsonschema.validate(json.loads(json.dumps(with_decode)), REPORT_SCHEMA)
    for row in with_decode["decode"]["layers"]:
        sympy.sympify(row["flops"]), sympy.sympify(row["state_bytes"])


SMALL = json.loads((Path(__file__).parents[1] / "codegen" / "small_sizes.json").read_text())


@pytest.mark.parametrize("name", ["memory_transformer", "sparse_transformer", "reformer", "perceiver_ar"])
def test_the_analysis_and_the_generated_module_agree(name):
    """Both read the same IR: analyze --decode refuses exactly where the generated module's
    decoding plan does (memory_transformer: a segment recurrence whose step attends to the
    memory before its segment decodes; sparse_transformer: a factorised position table
    flattened with its N axis outermost does; reformer's, with N / Rows inside the flattening,
    does not; perceiver_ar: the layers below a suffix of M positions re-run on a window)."""
    sizes = {k: v for k, v in SMALL[f"models/{name}.seq"].items() if k not in ("N", "B")} | {"L": 1}
    path = f"examples/models/{name}.seq"
    ours = seqdsl.analyze(path, **sizes, decode=True).decode.can_decode
    theirs = seqdsl.load(path, **sizes).can_decode
    assert ours[0] == theirs[0], (ours, theirs)


@pytest.mark.parametrize("name", ["h3", "spade"])
def test_state_bytes_equal_the_generated_modules_state(name):
    """The formulas against what a generated module keeps: `state.used_nbytes` (a cache's rows,
    not its buffer's spare ones) after a prefill of 21 tokens and one step (H3: a shift
    register and complex diagonal states; SPADE: a DPLR S4 state and a sliding window's keys)."""
    sizes = {k: v for k, v in SMALL[f"models/{name}.seq"].items() if k not in ("N", "B")} | {"L": 1, "S": 8}
    path = f"examples/models/{name}.seq"
    model = seqdsl.load(path, **sizes)
    assert model.can_decode[0], model.can_decode
    tokens = torch.randint(0, sizes["V"], (2, 21), generator=torch.Generator().manual_seed(0))
    _, state = model.prefill(tokens)
    _, state = model.step(tokens[:, -1], state)
    predicted = seqdsl.analyze(path, **sizes, B=2, N=22, decode=True).to_dict()["decode"]
    assert predicted["total"]["values"]["state_bytes"] == state.used_nbytes, state.describe()


@pytest.mark.parametrize("prompt", [21, 31])
def test_a_blocked_window_keeps_the_current_block_and_the_ones_before(prompt):
    """Reformer's local layer, ``causal() & window(2, block = C)``: after N tokens the cache
    holds the current block's N mod C keys and the C of the block before (not every key), as
    the generated module keeps (state.used_nbytes after a prefill and a step)."""
    sizes = {k: v for k, v in SMALL["models/reformer.seq"].items() if k not in ("N", "B")} | {"L": 1}
    path = "examples/models/reformer.seq"
    model = seqdsl.load(path, **sizes)
    tokens = torch.randint(0, sizes["V"], (2, prompt + 1), generator=torch.Generator().manual_seed(0))
    _, state = model.prefill(tokens[:, :prompt])
    _, state = model.step(tokens[:, -1], state)
    # the analysis at a length its require accepts (N % C == 0), its formula evaluated at N + 1
    d = seqdsl.analyze(path, **sizes, B=2, N=32, decode=True).to_dict()["decode"]
    formula = sympy.sympify(d["total"]["state_bytes"])
    at = {sym: (prompt + 1 if sym.name == "N" else 2 if sym.name == "B" else sizes[sym.name])
          for sym in formula.free_symbols}
    assert int(formula.subs(at)) == state.used_nbytes, state.describe()
    assert d["total"]["big_o"]["memory"] == "O(1)"


def test_cli_decode_table_and_json():
    from typer.testing import CliRunner

    from seqdsl.cli import app

    args = ["analyze", "complexity", "examples/mixers/retention.seq", "--set", "H=4", "--set", "Dh=16", "--decode"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "decoding: one generated token" in result.output and "[Dh, Dh] per head" in result.output
    assert "state bytes     = 4*B*Dh**2*H" in result.output
    result = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(result.stdout)["decode"]["can_decode"] is True
