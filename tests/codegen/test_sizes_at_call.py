"""A compiled module is a model: it takes any batch and length its weights allow and answers
as a module compiled at that size would, or refuses by name (codegen/torch/sizes.py).

Every example is loaded without B and N and run at other lengths and batches; its answer
(forward and gradients) is compared with a module compiled at those sizes, holding the same
weights (a position table's first rows). Examples whose weights fix N refuse other lengths
with an error naming N; the list of them is written down here, so a model that silently
stops serving other lengths fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = json.loads((Path(__file__).with_name("small_sizes.json")).read_text())
EXAMPLES = sorted(SMALL)
DOMAIN = {
    "mixers/selective_scan.seq": {2: lambda a: -a.exp()},
    "mixers/gla.seq": {3: torch.nn.functional.logsigmoid},
}
# Examples whose weights or structure fix the sequence length, and the weight that does:
# each refuses another N by name. (Factorised position tables whose N-carrying axis is the
# outermost where they are flattened — the Sparse Transformer's rows [N / (Img·C)], Reformer's
# axial rows [N / Cols] — are prefix-consistent: they serve every N ≤ the built one, held to
# modules compiled at N = 32 and 96 below.)
N_FIXED = {
    "models/hierarchical.seq": "chunk_order",
    "models/linformer.seq": "seq_project",
    "models/sinkhorn.seq": "structure",
    "models/synthesizer.seq": "table",
    "models/vit.seq": "position",
}


def _without(sizes: dict, *names: str) -> dict:
    return {k: v for k, v in sizes.items() if k not in names}


def _inputs(model, name: str, **sizes) -> list:
    inputs = list(model.example_inputs(**sizes))
    for index, fix in DOMAIN.get(name, {}).items():
        inputs[index] = fix(inputs[index])
    return inputs


def _same_weights(model, reference) -> None:
    """Give ``reference`` the weights of ``model`` (the first rows of a longer table)."""
    own = model.state_dict()
    state = {}
    for key, value in reference.state_dict().items():
        w = own[key]
        state[key] = w[tuple(slice(0, s) for s in value.shape)] if w.shape != value.shape else w
    reference.load_state_dict(state)


def _run(model, inputs, grad: bool):
    inputs = [t.detach().clone().requires_grad_(grad and t.is_floating_point()) for t in inputs]
    model.zero_grad()
    out = model(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    grads = []
    if grad:
        sum(o.float().square().mean() for o in outs if o.is_floating_point()).backward()
        grads = [p.grad for p in model.parameters()] + [t.grad for t in inputs if t.is_floating_point()]
    return [o.detach() for o in outs], grads


def _rel(a, b) -> float:
    if a is None or b is None:
        assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        return 0.0
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", EXAMPLES, ids=[e.replace("/", "-").removesuffix(".seq") for e in EXAMPLES])
def test_other_sizes_answer_as_compiled_at_them(name):
    sizes = _without(SMALL[name], "B", "N")
    model = seqdsl.load(ROOT / "examples" / name, **sizes).eval()
    if name in N_FIXED:
        assert "N" not in model.RUNTIME
        inputs = []
        for _, dtype, shape in model.INPUTS:    # N = 32 where the module was built for another N
            dims = [32 if (d[0] if isinstance(d, tuple) else d) == "N" else 2 if isinstance(d, str) else
                    d[1] if isinstance(d, tuple) else d for d in shape]
            inputs.append(torch.randint(0, 2, dims) if dtype == "int" else torch.randn(dims))
        with pytest.raises(seqdsl.SeqError, match=r"\bN = 32\b"):
            model(*inputs)
        return
    assert "N" in model.RUNTIME and "B" in model.RUNTIME, model.RUNTIME
    for n, b, grad in ((32, 1, False), (96, 3, True)):
        reference = seqdsl.load(ROOT / "examples" / name, **sizes, B=b, N=n).eval()
        _same_weights(model, reference)
        inputs = _inputs(reference, name, B=b, N=n)
        outs, grads = _run(model, inputs, grad)
        ref_outs, ref_grads = _run(reference, inputs, grad)
        # An equilibrium solve that stopped above its tol (DEQ at init) returns a point whose distance
        # to the fixed point is up to residual / (1 − ρ(∂f/∂z)): rounding differences move it freely.
        # Both then run the cell as a fixed stack of 4 applications, a function of the weights alone.
        if any(getattr(m, "residual", 0.0) > getattr(m, "tol", 1.0) for m in model.modules()):
            for m in (model, reference):
                m.fixed_points("unrolled", 4)
            outs, grads = _run(model, inputs, grad)
            ref_outs, ref_grads = _run(reference, inputs, grad)
        for o, r in zip(outs, ref_outs):
            assert o.shape == r.shape
            assert _rel(o, r) < 1e-5, f"N={n} B={b}: output differs by {_rel(o, r):.2e}"
        for g, r in zip(grads, ref_grads):
            if g is not None and r is not None and g.shape != r.shape:   # a position table's gradient
                g = g[tuple(slice(0, s) for s in r.shape)]
            assert _rel(g, r) < 1e-4, f"N={n} B={b}: gradient differs by {_rel(g, r):.2e}"


# Causal examples: what the model says about a prefix does not depend on what follows.
# (perceiver_ar answers only for the last M positions of its input: its own test is below.)
CAUSAL = [
    "mixers/gla.seq", "mixers/h3.seq", "mixers/linear_attention.seq", "mixers/retention.seq",
    "mixers/s4d.seq", "mixers/selective_scan.seq", "mixers/sliding_window.seq", "mixers/softmax_attention.seq",
    "models/block_recurrent.seq", "models/gla.seq", "models/h3.seq", "models/h3_hybrid.seq", "models/hyena.seq",
    "models/linear_transformer.seq", "models/local_attention.seq", "models/mamba.seq", "models/mega_chunk.seq",
    "models/memory_transformer.seq", "models/retnet.seq", "models/spade.seq", "models/sparse_transformer.seq",
    "models/transformer_decoder.seq",
]


@pytest.mark.parametrize("name", CAUSAL, ids=[e.replace("/", "-").removesuffix(".seq") for e in CAUSAL])
def test_causal_prefix_does_not_see_the_future(name):
    model = seqdsl.load(ROOT / "examples" / name, **_without(SMALL[name], "B", "N")).eval()
    full = _inputs(model, name, B=2, N=96)
    shapes = [shape for _, _, shape in model.INPUTS]
    prefix = [t.narrow(shape.index("N"), 0, 64) if "N" in shape else t for t, shape in zip(full, shapes)]
    with torch.no_grad():
        out_full, out_prefix = model(*full), model(*prefix)
    out_full = out_full[0] if isinstance(out_full, tuple) else out_full
    out_prefix = out_prefix[0] if isinstance(out_prefix, tuple) else out_prefix
    axis = next(i for i, (a, b) in enumerate(zip(out_full.shape, out_prefix.shape)) if a != b)
    head = out_full.narrow(axis, 0, 64)
    assert _rel(out_prefix, head) < 1e-5


def test_a_weight_fixed_size_is_refused_by_name():
    model = seqdsl.load(ROOT / "examples/mixers/h3.seq", D=32)
    q = torch.randn(2, 40, 48)
    with pytest.raises(seqdsl.SeqError, match=r"h3: input q has D = 48, the module was built for D = 32"):
        model(q, q, q)


POSITIONS = """
dim B, N = 16, D = 8
model tiny(tokens: int[B, N]) -> [B, N, D] {
  param table: [50, D] = normal(1)
  param pos: [N, D] = normal(1)
  return embed(tokens, table = table) + pos
}
"""


def test_a_position_table_serves_shorter_inputs_and_refuses_longer_ones():
    model = seqdsl.load(POSITIONS)
    assert model.BOUNDS == {"N": 16}
    tokens = torch.randint(0, 50, (3, 10))
    out = model(tokens)
    expected = model.table[tokens] + model.pos[:10]
    assert torch.equal(out, expected)
    with pytest.raises(seqdsl.SeqError, match=r"tokens has N = 20.*at most N = 16"):
        model(torch.randint(0, 50, (3, 20)))


REQUIRE = """
dim B, H = 2, N = 64, Dh = 16
mixer blocked(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) -> [B, H, N, Dh] {
  require N % 8 == 0, "N must be a multiple of the block of 8"
  return mix(q, k, v, score = dot(scale = Dh ** -0.5), mask = causal(), norm = softmax)
}
"""


def test_a_failed_require_is_checked_at_the_call_with_the_files_message():
    model = seqdsl.load(REQUIRE)
    ok = torch.randn(1, 2, 24, 16)
    assert model(ok, ok, ok).shape == ok.shape
    bad = torch.randn(1, 2, 12, 16)
    with pytest.raises(seqdsl.SeqError, match="N must be a multiple of the block of 8") as err:
        model(bad, bad, bad)
    assert err.value.line == 4


def test_a_require_that_divides_by_a_size_refuses_a_zero_divisor_by_name():
    """``N % (B - 2)`` at B = 2 would be Python's ZeroDivisionError inside the module: the call
    refuses it with the file's message and position instead (found by the grammar fuzzer)."""
    model = seqdsl.load("dim B, N = 8, D = 2\nrequire N % (B - 2) == 0\nmixer m(x: [B, N, D]) {\n  return x\n}\n")
    assert model(torch.ones(4, 8, 2)).shape == (4, 8, 2)
    with pytest.raises(seqdsl.SeqError, match=r"N % \(B - 2\) == 0 \(it divides by B - 2, which must not be 0\)") as err:
        model(torch.ones(2, 8, 2))
    assert (err.value.line, err.value.column) == (2, 1)
    with pytest.raises(seqdsl.SeqError, match="requirement failed"):
        model(torch.ones(5, 8, 2))      # 8 % 3 != 0


def test_the_algorithm_is_chosen_for_the_length_of_each_call():
    model = seqdsl.load(ROOT / "examples/mixers/softmax_attention.seq")
    assert "rt.by_length(N, " in model.source
    small = [torch.randn(1, 2, 16, 8) for _ in range(3)]
    large = [torch.randn(1, 2, 512, 8) for _ in range(3)]
    for q, k, v in (small, large):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert _rel(model(q, k, v), expected) < 1e-5


def test_sizes_given_to_load_are_fixed():
    model = seqdsl.load(ROOT / "examples/mixers/softmax_attention.seq", N=64)
    assert "N" not in model.RUNTIME
    x = torch.randn(1, 2, 32, 8)
    with pytest.raises(seqdsl.SeqError, match=r"input q has N = 32, the module was built for N = 64"):
        model(x, x, x)


def test_perceiver_ar_answers_do_not_see_later_tokens():
    """Perceiver AR answers for the last M positions only, so a prefix's answers are not a part
    of the whole's; instead: changing token j changes no answer for a position before j."""
    name = "models/perceiver_ar.seq"
    sizes = _without(SMALL[name], "B", "N")
    model = seqdsl.load(ROOT / "examples" / name, **sizes).eval()
    n, m = 96, sizes["M"]
    (tokens,) = _inputs(model, name, B=2, N=n)
    j = n - m // 2                        # a position among the answered ones
    changed = tokens.clone()
    changed[:, j:] = (changed[:, j:] + 1) % sizes["V"]
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    first = j - (n - m)                   # answers for positions n - m .. j - 1 must not move
    assert _rel(after[:, :first], before[:, :first]) < 1e-6
    assert _rel(after[:, first:], before[:, first:]) > 1e-3     # and later ones do


NAMES = """
dim B, N = 8, D = 4
model m(x: [B, N, D]) {
  B = relu(x)
  int = B + 1
  self = int[:, : N // 2]
  return self * 2
}
"""


def test_locals_named_like_dims_builtins_or_imports_do_not_shadow_them():
    """A local `B` in a model whose batch B is read at call time once returned the wrong batch
    silently; `model m` shadowed the masks import; `int`/`self` broke the module."""
    model = seqdsl.load(NAMES)
    x = torch.randn(3, 10, 4)
    out = model(x)
    assert out.shape == (3, 5, 4)
    assert torch.equal(out, (torch.relu(x) + 1)[:, :5] * 2)
    assert type(model).__name__ == "MModel"
