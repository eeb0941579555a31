"""The Triton backend end to end: every example compiles with ``--backend triton``; each
mixer either gets a generated kernel or falls back to PyTorch with its reason printed; and
every example that gets kernels computes what the PyTorch backend computes, forward and
gradients (kernels interpreted on a CPU through TRITON_INTERPRET=1, set in conftest.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the backends need torch")
pytest.importorskip("triton", reason="the Triton backend needs triton")

import seqdsl  # noqa: E402
from seqdsl.cli import app  # noqa: E402

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
SMALL = json.loads((ROOT / "tests" / "codegen" / "small_sizes.json").read_text())
EXAMPLES = sorted(SMALL)
DOMAIN = {   # inputs with a domain (as in tests/codegen/test_examples_run.py)
    "mixers/selective_scan.seq": {2: lambda a: -a.exp()},
    "mixers/gla.seq": {3: torch.nn.functional.logsigmoid},
}


def _interpreted_sizes(name: str) -> dict:
    """SMALL with N = 32 (and Mamba narrower): the interpreter runs a kernel's programs one
    after the other, ~4 ms per loop step, so the recurrent scans cost B·Dm·N steps."""
    sizes = dict(SMALL[name])
    if "N" in sizes and name != "models/sinkhorn.seq":
        sizes["N"] = 32
    if name == "models/mamba.seq":
        sizes["D"] = 8
    if "Dm" in sizes:
        sizes["Dm"] = 4
    return sizes


def _id(name: str) -> str:
    return name.replace("/", "-").removesuffix(".seq")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = seqdsl.compile(ROOT / "examples" / name, out / _id(name), backend="triton", **SMALL[name])
        return cache[name]

    return get


@pytest.mark.parametrize("name", EXAMPLES, ids=[_id(e) for e in EXAMPLES])
def test_every_example_compiles_and_says_what_falls_back(name, compiled):
    result = compiled(name)
    ast.parse(result.source)                     # the written module is valid Python
    kernels = [c for c in result.choices if c.backend == "triton"]
    for c in result.choices:
        if c.backend != "triton":
            assert c.note.startswith("PyTorch fallback: ") and len(c.note) > len("PyTorch fallback: ") + 10, c
    if kernels:
        assert "@triton.jit" in result.source
        for c in kernels:
            assert c.note.startswith("generated kernel mix_"), c
            assert c.note.split()[2] in result.source


def _same_weights(a, b):
    b.load_state_dict(a.state_dict())


def _run(model, inputs):
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = model(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(1)
    # the loss weights drawn in fp32 whatever the model's dtype (the same numbers for a float64 reference)
    loss = sum((o * torch.randn(o.shape).to(o.dtype)).sum() for o in outs if o.is_floating_point())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    grads.update({f"input {i}": t.grad for i, t in enumerate(inputs) if t.grad is not None})
    return outs, grads


def _rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", EXAMPLES, ids=[_id(e) for e in EXAMPLES])
def test_examples_with_kernels_match_the_torch_backend(name, compiled):
    if not any(c.backend == "triton" for c in compiled(name).choices):
        pytest.skip(f"{name}: no mixer gets a Triton kernel (each fallback is checked above)")
    sizes = _interpreted_sizes(name)
    ref = seqdsl.load(ROOT / "examples" / name, **sizes)
    model = seqdsl.load(ROOT / "examples" / name, backend="triton", **sizes)
    _same_weights(ref, model)
    torch.manual_seed(0)
    inputs = list(ref.example_inputs(**sizes))
    for index, fix in DOMAIN.get(name, {}).items():
        inputs[index] = fix(inputs[index])
    ref.eval(), model.eval()                     # dropout off: the two runs must see the same function
    outs_ref, grads_ref = _run(ref, inputs)
    outs, grads = _run(model, inputs)
    # An equilibrium solve that stopped above its tol (DEQ at init: codegen/torch/equilibrium.py)
    # returns a point whose distance to the fixed point is up to residual / (1 − ρ(∂f/∂z)):
    # rounding differences between backends move it freely. Both then run the cell as a fixed
    # stack of applications instead (the unrolled mode), a function of the weights alone, so the
    # kernels inside the cell are still compared forward and backward.
    loose = [m for m in model.modules() if getattr(m, "residual", 0.0) > getattr(m, "tol", 1.0)]
    if loose:
        for m in (ref, model):
            m.fixed_points("unrolled", 4)
        outs_ref, grads_ref = _run(ref, inputs)
        outs, grads = _run(model, inputs)
        assert all(m.steps == 4 for m in loose)
    for o, r in zip(outs, outs_ref):
        if o.is_floating_point():
            assert _rel(o, r) < 1e-4, f"forward: relative error {_rel(o, r):.2e}"
    assert grads.keys() == grads_ref.keys()
    # Relative error < 1e-3, measured against the gradient's own size or, for gradients that are
    # mathematically zero (a key bias under softmax), against the largest gradient of the model.
    largest = max(float(g.double().norm()) for g in grads_ref.values())
    doubtful = {}
    for key, g in grads.items():
        err = float((g.double() - grads_ref[key].double()).norm())
        size = max(float(grads_ref[key].double().norm()), 1e-6 * largest)
        if err >= 1e-3 * size:
            doubtful[key] = err / size
    if doubtful:
        # A gradient that is a sum with cancellation (a bias before batch norm and pooling) is
        # uncertain in fp32 on any backend: then, as FlexAttention's tests, the kernel's error
        # against float64 may be at most twice the fp32 PyTorch backend's own.
        ref64 = seqdsl.load(ROOT / "examples" / name, **sizes).double()
        ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
        ref64.eval()
        _, grads64 = _run(ref64, [t.double() if t.is_floating_point() else t for t in inputs])
        for key, first in doubtful.items():
            kernel_err = _rel(grads[key], grads64[key])
            torch_err = _rel(grads_ref[key], grads64[key])
            assert torch_err < 1e-2 and kernel_err <= 2 * torch_err, (
                f"gradient of {key}: relative error {first:.2e} against fp32 PyTorch; against float64 "
                f"{kernel_err:.2e}, PyTorch fp32's own {torch_err:.2e}")


def test_h3_gates_are_fused_into_the_kernel_calls(compiled):
    """H3: kv = (shift(k) + D_shift ⊙ k) ⊙ v, y = q ⊙ (diag(kv) + D_diag ⊙ kv). Each SSM's
    skip term and output gate go into its kernel call (codegen/fuse.py); kv, read by both
    the second SSM and its skip term, is the one intermediate left in memory."""
    result = compiled("mixers/h3.seq")
    assert all(c.backend == "triton" for c in result.choices), [c.note for c in result.choices]
    forward = result.source.split("def forward", 1)[1]
    # each line calls its kernel (directly, or through the packed-rows wrapper rt.*_by_document)
    calls = {m.group(1): line for line in forward.splitlines() if not line.lstrip().startswith("#")
             for m in [re.search(r"[(=] ?(mix_\w+)\b", line)] if m}
    assert set(calls) == {"mix_shift_ssm", "mix_diag_ssm"}, calls
    assert "skip=self.D_shift" in calls["mix_shift_ssm"] and "post=v" in calls["mix_shift_ssm"]
    assert "skip=self.D_diag" in calls["mix_diag_ssm"] and "post=q" in calls["mix_diag_ssm"]
    # nothing left outside the kernels (the torch step that prefill / step run is the other branch)
    running = "\n".join(line.split(" if not rt.decoding() else ")[0] for line in forward.splitlines())
    assert " * " not in running and " + " not in running, running


def test_cli_compile_triton_prints_kernels_and_fallbacks(tmp_path):
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["compile", str(ROOT / "examples" / "models" / "reformer.seq"), "--backend",
                                   "triton", "-o", str(tmp_path), *[f"--set={k}={v}" for k, v in
                                                                  SMALL["models/reformer.seq"].items()]])
    assert res.exit_code == 0, res.output
    assert "wrote " in res.output
    # Reformer's LSH buckets are content-based: its attention falls back, and says why.
    assert "PyTorch fallback:" in res.output


def test_mixers_of_one_structure_share_their_kernels(tmp_path):
    """h3_hybrid repeats an H3 block (shift SSM, diagonal SSM) and a causal attention block
    (12 layers at its default sizes): three structures, so three generated sections."""
    result = seqdsl.compile(ROOT / "examples" / "models" / "h3_hybrid.seq", tmp_path, backend="triton")
    kernels = {c.note.split()[2] for c in result.choices if c.backend == "triton"}
    assert len([c for c in result.choices if c.backend == "triton"]) > len(kernels) == 3, kernels
    assert result.source.count("# ==== generated for ") == 3


def test_hyena_gates_are_fused_with_weights_sliced_after_the_mix(compiled):
    """Hyena: long_conv(v ⊙ z₁) + (v ⊙ z₁) ⊙ bias[slice], then ⊙ z₀. The bias slice is written
    after the mix in the file; the fold computes it ahead of the call (codegen/fuse.py)."""
    result = compiled("models/hyena.seq")
    forward = result.source.split("def forward", 1)[1]
    calls = [line for line in forward.splitlines() if re.search(r"[(=] ?mix_\w+", line) and "long_conv" in line]
    assert calls and all("pre=" in c and "skip=" in c and "post=" in c for c in calls), calls


def test_the_annotated_kernel_in_the_docs_is_the_generated_one(tmp_path):
    """docs/triton.md quotes the retention forward kernel in pieces: each piece must stand,
    line for line, in what `seqdsl compile` writes today."""
    import re

    # the docs' command fixes Dh (`--set Dh=64`), so that the scale is a literal of the kernel
    source = seqdsl.compile(ROOT / "examples/mixers/retention.seq", tmp_path, backend="triton", Dh=64,
                            **SMALL["mixers/retention.seq"]).source.splitlines()
    doc = (ROOT / "docs" / "triton.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc.split("## One generated kernel, annotated", 1)[1], re.S)
    assert len(blocks) >= 3
    for block in blocks:
        lines = block.rstrip("\n").splitlines()
        starts = [i for i, line in enumerate(source) if line == lines[0]]
        assert any(source[i:i + len(lines)] == lines for i in starts), f"not in the generated kernel:\n{block}"
