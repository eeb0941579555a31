"""``moe``: Switch routing with capacity and its auxiliary losses, against the mathematics of
the paper written out here (Fedus, Zoph & Shazeer 2021, §2.1-2.2; mesh-tensorflow's
``_switch_gating``):

    p_t = softmax(x_t W_rᵀ)                      router probabilities over E experts
    e_t = argmax_e p_te                          top-1 expert
    C   = ⌈capacity · T / E⌉                     tokens an expert serves, first come first served
    y_t = p_{t,e_t} · FFN_{e_t}(x_t)             if t is among the first C tokens sent to e_t, else 0
    aux = α · E · Σ_e f_e · P_e,  f_e = |{t : e_t = e}| / T,  P_e = (1/T) Σ_t p_te
    z   = β · (1/T) Σ_t (log Σ_e exp(x_t W_rᵀ)_e)²   (ST-MoE's router z-loss)
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402
from seqdsl import runner  # noqa: E402

SRC = """
dim B = 2, N = 12, D = 8, E = 4, F = 6
block ffn(x: [B, N, D]) -> [B, N, D] { return mlp(x, F, act = relu, bias = false) }
model m(x: [B, N, D]) -> [B, N, D] {
  y = moe(x, expert = ffn, experts = E, top_k = 1, capacity = CAP, balance = ALPHA, z_loss = BETA,
          router_init = normal(1.0))
  return LAST
}
"""


def _load(cap="0.5", alpha="0.01", beta="0", last="y"):
    return seqdsl.load(SRC.replace("CAP", cap).replace("ALPHA", alpha).replace("BETA", beta).replace("LAST", last))


def _reference(model, x, cap: float, alpha: float, beta: float):
    state = model.state_dict()
    tokens = x.reshape(-1, x.shape[-1])
    t, n_exp = tokens.shape[0], state["y.router"].shape[0]
    logits = tokens @ state["y.router"].T
    p = torch.softmax(logits, -1)
    choice = p.argmax(-1)
    c = math.ceil(cap * t / n_exp)
    y = torch.zeros_like(tokens)
    served = [0] * n_exp
    for i in range(t):                         # in token order: the first C of each expert
        e = int(choice[i])
        if served[e] < c:
            served[e] += 1
            w1, w2 = state[f"y.experts.{e}.mlp.w1"], state[f"y.experts.{e}.mlp.w2"]
            y[i] = p[i, e] * (torch.relu(tokens[i] @ w1.T) @ w2.T)
    f = torch.stack([(choice == e).float().mean() for e in range(n_exp)])
    aux = alpha * n_exp * (f * p.mean(0)).sum() + beta * torch.logsumexp(logits, -1).square().mean()
    return y.reshape(x.shape), aux, served, c


@pytest.mark.parametrize("cap", ["0.5", "1.25"])
def test_switch_layer_equals_the_paper(cap):
    model = _load(cap=cap, alpha="0.01", beta="0.001")
    x = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(3))
    y = model(x).detach()
    ref, aux, served, c = _reference(model, x, float(cap), 0.01, 0.001)
    assert float((y - ref).norm() / ref.norm()) < 1e-6
    assert abs(float(model.aux_loss()) - float(aux)) < 1e-6 * max(1.0, float(aux))
    if cap == "0.5":            # capacity binds: some tokens were dropped (zero rows)
        assert c == 3 and sum(served) < 24 and int((y.reshape(-1, 8).abs().sum(-1) == 0).sum()) == 24 - sum(served)


def test_aux_loss_sums_the_layers_and_is_reset_each_forward():
    model = _load(alpha="0.5", last="moe(y, expert = ffn, experts = E, balance = 0.25)")
    x = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(4))
    model(x)
    first = float(model.aux_loss())
    model(x)
    assert float(model.aux_loss()) == pytest.approx(first)          # not accumulated over forwards
    # 0.5 · E Σ f P (layer 1) + 0.25 · E Σ f P (layer 2): both terms are ≥ α (Σ f P ≥ 1/E)
    assert first >= 0.5 + 0.25 - 1e-6
    zero = _load(alpha="0", last="moe(y, expert = ffn, experts = E, balance = 0)")
    zero(x)
    assert float(zero.aux_loss()) == 0.0


def test_the_balance_coefficient_reaches_the_generated_module_and_the_router_gradient():
    a, b = _load(alpha="0.01"), _load(alpha="0.2")
    assert "balance=0.01" in a.source and "balance=0.2" in b.source
    x = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(5))
    grads = []
    for model in (a, b):
        runner._step(model, (x.clone().requires_grad_(True),), backward=True)   # what `seqdsl run` does
        grads.append(model.y.router.grad.clone())
    assert float((grads[0] - grads[1]).norm()) > 1e-6       # the aux loss is part of the loss run differentiates
