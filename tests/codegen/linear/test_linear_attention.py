"""linear_attention, every algorithm, against the literal recurrence in float64: outputs, final
states and the gradients of q, k, v, the decay / gate and the initial state (fp32, relative
error < 1e-4). Awkward sizes on purpose: N = 63, 257; D = 60; chunks that do not divide N."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")
F = torch.nn.functional

from codegen.linear.chunked import prefer_scan  # noqa: E402
from codegen.linear.reference import linear_attention_ref  # noqa: E402
from codegen.linear.torch_impl import ALGORITHMS, linear_attention  # noqa: E402


@dataclass(frozen=True)
class Case:
    b: int
    h: int
    n: int
    d: int
    dv: int
    feature: str = "identity"
    norm: str = "none"
    causal: bool = True
    decay: str | None = None      # head | token | channel
    gate_scale: float = 1.0
    chunk: int = 64
    m: int = 0                    # random features (favor, spectral)

    @property
    def id(self) -> str:
        parts = [f"B{self.b}-H{self.h}-N{self.n}-D{self.d}"]
        if self.dv != self.d:
            parts.append(f"Dv{self.dv}")
        parts += [self.feature + (f"{self.m}" if self.m else ""), self.norm, "causal" if self.causal else "global"]
        if self.decay:
            parts.append(self.decay + (f"x{self.gate_scale:g}" if self.gate_scale != 1 else ""))
        parts.append(f"C{self.chunk}")
        return "-".join(parts)

    @property
    def width(self) -> int:
        return {"favor": self.m, "spectral": 2 * self.m}.get(self.feature, self.d)

    def inputs(self) -> dict:
        g = torch.Generator().manual_seed(zlib.crc32(self.id.encode()))
        b, h, n, d, dv, f = self.b, self.h, self.n, self.d, self.dv, self.width

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64)

        small = 0.5 if self.feature in ("exp", "favor") else 1.0
        x = {"q": small * randn(b, h, n, d), "k": small * randn(b, h, n, d), "v": randn(b, h, n, dv)}
        if self.feature == "favor":
            x["q"], x["k"] = x["q"] * d ** -0.25, x["k"] * d ** -0.25
        if self.decay == "head":
            x["decay"] = 0.7 + 0.3 * torch.rand(h, generator=g, dtype=torch.float64)       # rates, not logs
        elif self.decay == "token":
            x["decay"] = F.logsigmoid(randn(b, h, n) + 2) * self.gate_scale
        elif self.decay == "channel":
            x["decay"] = F.logsigmoid(randn(b, h, n, f) + 1) * self.gate_scale
        extra = 1 if self.norm == "sum" else 0
        state = 0.3 * randn(b, h, f, dv + extra)
        if extra:
            state[..., -1] = state[..., -1].abs()                                          # Σ φ(k) ≥ 0
        x["initial_state"] = state
        return x

    def projection(self, dtype=torch.float64) -> torch.Tensor | None:
        """The random features' projection (a constant here; its gradient has its own test)."""
        if not self.m:
            return None
        g = torch.Generator().manual_seed(self.m)
        w = torch.randn(self.m, self.d, generator=g, dtype=torch.float64)
        return (w if self.feature == "favor" else 0.5 * w).to(dtype)

    def kwargs(self, dtype=torch.float32) -> dict:
        return dict(feature=self.feature, projection=self.projection(dtype), norm=self.norm, causal=self.causal,
                    log_decay=self.decay != "head", scale=0.7, return_state=True)


CASES = [
    Case(1, 2, 257, 60, 60),
    Case(2, 3, 257, 60, 60, "elu1", "sum", chunk=50),
    Case(2, 2, 63, 60, 36, "relu", chunk=16),
    Case(1, 2, 63, 16, 24, "exp", "sum", chunk=16),
    Case(2, 2, 63, 16, 24, "favor", "sum", chunk=16, m=32),
    Case(2, 2, 63, 16, 24, "favor", "none", chunk=16, m=32),
    Case(2, 2, 63, 16, 24, "spectral", "none", chunk=16, m=16),
    Case(1, 3, 257, 60, 60, decay="head"),
    Case(1, 2, 257, 32, 48, decay="token", chunk=50),
    Case(1, 2, 257, 32, 48, decay="channel"),
    Case(2, 2, 63, 60, 60, "elu1", "sum", decay="channel", chunk=16),
    Case(2, 2, 63, 60, 36, decay="channel", gate_scale=10, chunk=16),
    Case(1, 2, 130, 24, 24, decay="channel", gate_scale=30, chunk=64),     # sub-blocks in every chunk
    Case(2, 3, 257, 4, 4, decay="channel", chunk=64),                      # the scan form
    Case(2, 3, 257, 4, 1, "elu1", "sum", decay="token", chunk=64),         # the scan form, normalised
    Case(1, 2, 257, 60, 60, "elu1", "sum", causal=False),
    Case(2, 2, 63, 16, 24, "favor", "sum", causal=False, m=32),
]

_REFERENCES: dict[str, tuple] = {}


def _reference(case: Case, grads):
    if case.id not in _REFERENCES:
        _REFERENCES[case.id] = grads(lambda **x: linear_attention_ref(**x, **case.kwargs(torch.float64)),
                                     case.inputs(), torch.float64)
    return _REFERENCES[case.id]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_the_recurrence(case, algorithm, close, grads):
    if algorithm == "quadratic" and case.decay == "channel" and case.n > 200:
        pytest.skip("the quadratic form of a per-channel gate materialises N²·F: exercised at N=63")

    def fn(**x):
        return linear_attention(**x, **case.kwargs(), algorithm=algorithm, chunk=case.chunk)

    close(fn, None, case.inputs(), reference=_reference(case, grads))


@pytest.mark.parametrize("feature", ["favor", "spectral"])
def test_gradient_of_the_random_feature_projection(feature, grads, relerr):
    """The projection is a parameter too (learned spectral kernels). Its gradient sums over every
    position and feature, with cancellations under the normaliser: fp32 tolerance 1e-3."""
    case = Case(2, 2, 63, 16, 24, feature, "sum" if feature == "favor" else "none", decay="token", chunk=16, m=16)
    x = case.inputs()
    x["projection"] = case.projection()
    kw = {k: v for k, v in case.kwargs().items() if k != "projection"}
    ref = grads(lambda **y: linear_attention_ref(**y, **kw), x, torch.float64)[1]["projection"]
    for algorithm in ALGORITHMS:
        got = grads(lambda a=algorithm, **y: linear_attention(**y, **kw, algorithm=a, chunk=case.chunk), x,
                    torch.float32)[1]["projection"]
        assert relerr(got, ref) < 1e-3, algorithm


def test_the_cases_cover_both_intra_chunk_forms():
    forms = {prefer_scan(c.width, c.dv + (c.norm == "sum"), c.chunk) for c in CASES if c.causal}
    assert forms == {True, False}


@pytest.mark.parametrize("chunk", [1, 7, 63, 64, 300])
@pytest.mark.parametrize("decay", [None, "head", "token", "channel"])
def test_all_algorithms_agree(decay, chunk, relerr):
    case = Case(2, 2, 63, 12, 20, "elu1", "sum", decay=decay, chunk=chunk)
    x = {k: v.float() for k, v in case.inputs().items()}
    outs = {a: linear_attention(**x, **case.kwargs(), algorithm=a, chunk=chunk) for a in ALGORITHMS}
    for a in ALGORITHMS[1:]:
        assert relerr(outs[a][0], outs["quadratic"][0]) < 1e-5, a
        assert relerr(outs[a][1], outs["quadratic"][1]) < 1e-5, a


def test_batch_elements_are_independent(relerr):
    case = Case(3, 2, 70, 16, 16, decay="channel", chunk=16)
    x = {k: v.float() for k, v in case.inputs().items()}
    whole = linear_attention(**x, **case.kwargs())[0]
    for i in range(case.b):
        one = linear_attention(**{k: v[i:i + 1] for k, v in x.items()}, **case.kwargs())[0]
        assert relerr(one, whole[i:i + 1]) < 1e-6


def test_broadcast_leading_dims_equal_expanded_inputs(relerr):
    """q, k shared by the heads ([B, 1, N, S]) and one value per head ([B, E, N, 1]): the
    selective scan's layout; the decay per head broadcasts over the batch."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 50, 8, generator=g), torch.randn(2, 1, 50, 8, generator=g)
    v = torch.randn(2, 5, 50, 1, generator=g)
    for decay in (torch.rand(5, generator=g) * 0.5 + 0.5, -torch.rand(2, 5, 50, 8, generator=g)):
        log = decay.dim() > 1
        for algorithm in ALGORITHMS:
            out = linear_attention(q, k, v, decay=decay, log_decay=log, algorithm=algorithm, chunk=16)
            full = linear_attention(q.expand(2, 5, 50, 8), k.expand(2, 5, 50, 8), v, decay=decay, log_decay=log,
                                    algorithm="recurrent")
            assert out.shape == (2, 5, 50, 1)
            assert relerr(out, full) < 1e-5, algorithm


def test_scale_cancels_under_the_sum_normaliser(relerr):
    case = Case(1, 2, 40, 8, 8, "elu1", "sum")
    x = {k: v.float() for k, v in case.inputs().items() if k != "initial_state"}
    a = linear_attention(**x, feature="elu1", norm="sum", scale=1.0)
    b = linear_attention(**x, feature="elu1", norm="sum", scale=123.0)
    assert relerr(a, b) < 1e-6


def test_float_decay_equals_a_per_head_tensor(relerr):
    q, k, v = torch.randn(3, 2, 30, 8).unbind(0)
    a = linear_attention(q, k, v, decay=0.9, algorithm="chunked", chunk=8)
    b = linear_attention(q, k, v, decay=torch.full((2,), 0.9), algorithm="recurrent")
    c = linear_attention(q, k, v, decay=torch.tensor(0.9).log(), log_decay=True, algorithm="quadratic")
    assert relerr(a, b) < 1e-6 and relerr(c, b) < 1e-6


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(decay=0.9, causal=False), "causal"),
    (dict(algorithm="fft"), "unknown algorithm"),
    (dict(norm="softmax"), "norm"),
    (dict(feature="favor"), "projection"),
    (dict(feature="cosine"), "unknown feature"),
    (dict(decay=torch.rand(2, 30, 3)), "per-channel decay"),
    (dict(initial_state=torch.zeros(2, 8, 8), norm="sum"), "normaliser"),
])
def test_errors_say_what_is_wrong(kwargs, message):
    q, k, v = torch.randn(3, 2, 30, 8).unbind(0)
    with pytest.raises(ValueError, match=message):
        linear_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("decay", [None, "head", "token", "channel"])
@pytest.mark.parametrize(("d", "chunk"), [(12, 7), (4, 16)], ids=["quadratic-form", "scan-form"])
def test_no_position_of_the_output_is_left_unwritten(decay, d, chunk, monkeypatch, relerr):
    """Without autograd the blocks write into one preallocated output: start it as NaN."""
    from codegen.linear import chunked

    monkeypatch.setattr(chunked, "SCRATCH_FILL", float("nan"))
    case = Case(2, 2, 101, d, d, "elu1", "sum", decay=decay, gate_scale=40.0, chunk=chunk)
    x = {k: v.float() for k, v in case.inputs().items()}
    with torch.no_grad():
        out = linear_attention(**x, **case.kwargs(), chunk=chunk)[0]
    assert torch.isfinite(out).all()
    assert relerr(out, linear_attention(**x, **case.kwargs(), algorithm="recurrent")[0]) < 1e-5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_empty_sequence_returns_the_initial_state(algorithm):
    q, k, v = torch.randn(3, 2, 0, 8).unbind(0)
    s0 = torch.randn(2, 8, 8)
    o, s = linear_attention(q, k, v, decay=torch.zeros(2, 0, 8), log_decay=True, initial_state=s0,
                            algorithm=algorithm, return_state=True)
    assert o.shape == (2, 0, 8) and torch.equal(s, s0)


@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_factored_rank_one_gate_equals_the_materialised_one(algorithm, chunk, relerr):
    from codegen.linear.chunked import OuterGate

    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 1, 70, 6, generator=g), torch.randn(2, 1, 70, 6, generator=g)
    v = torch.randn(2, 3, 70, 1, generator=g)
    rate, channel = torch.rand(2, 3, 70, generator=g), -torch.rand(3, 6, generator=g) * 3
    a = linear_attention(q, k, v, decay=OuterGate(rate, channel), log_decay=True, algorithm=algorithm, chunk=chunk)
    b = linear_attention(q, k, v, decay=rate[..., None] * channel[:, None, :], log_decay=True, algorithm="recurrent")
    assert relerr(a, b) < 1e-5
