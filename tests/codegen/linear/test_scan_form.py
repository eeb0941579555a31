"""The scan form of chunked linear attention (scan_form.py: batch dims last, in-place steps in
reused buffers without autograd) against the float64 recurrence: outputs, final states and
gradients, over several blocks of chunks, a partial last chunk, and batch dims that only
some operands have (a gate per head over keys and values shared by the heads)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the linear-family runtime needs torch")

from codegen.linear import chunked  # noqa: E402
from codegen.linear.chunked import OuterGate, prefer_scan  # noqa: E402
from codegen.linear.reference import linear_attention_ref  # noqa: E402
from codegen.linear.torch_impl import linear_attention  # noqa: E402

N, F_, V = 203, 4, 3            # 203 = 6 chunks of 32 and 11 positions


def _inputs(kind: str | None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(2, 1, N, F_, generator=g),            # shared by the 3 heads
         "k": torch.randn(1, 1, N, F_, generator=g),            # shared by batch and heads
         "v": torch.randn(2, 3, N, V, generator=g),
         "initial_state": torch.randn(2, 3, F_, V, generator=g)}
    if kind == "head":
        x["decay"] = -torch.rand(3, generator=g)
    elif kind == "token":
        x["decay"] = -torch.rand(2, 3, N, generator=g)
    elif kind == "channel":
        x["decay"] = -2 * torch.rand(2, 3, N, F_, generator=g)
    elif kind == "outer":
        x["decay"] = OuterGate(torch.rand(2, 3, N, generator=g), -torch.rand(3, F_, generator=g) * 3)
    return x


def _reference(x: dict):
    d = x.get("decay")
    if isinstance(d, OuterGate):
        d = d.materialize()
    y = {k: (t.double() if torch.is_tensor(t) else t) for k, t in x.items()}
    y["decay"] = None if d is None else d.double()
    return linear_attention_ref(**y, log_decay=d is not None, return_state=True)


@pytest.mark.parametrize("kind", [None, "head", "token", "channel", "outer"])
def test_scan_form_equals_the_recurrence(kind, monkeypatch, relerr):
    assert prefer_scan(F_, V, 32)
    monkeypatch.setattr(chunked, "BLOCK_BUDGET", 2 * 2 * 3 * F_ * V)     # blocks of 2 chunks
    monkeypatch.setattr(chunked, "SCRATCH_FILL", float("nan"))
    x = _inputs(kind)
    kw = dict(log_decay=kind is not None, chunk=32, return_state=True)
    o_ref, s_ref = _reference(x)
    with torch.no_grad():                                    # in place, in reused buffers
        o, s = linear_attention(**x, **kw)
    assert relerr(o, o_ref) < 1e-5 and relerr(s, s_ref) < 1e-5

    leaves = {k: (t.clone().requires_grad_() if torch.is_tensor(t) else t) for k, t in x.items()}
    if kind == "outer":
        leaves["decay"] = OuterGate(x["decay"].rate.clone().requires_grad_(),
                                    x["decay"].channel.clone().requires_grad_())
    o, s = linear_attention(**leaves, **kw)                  # out of place, under autograd
    assert relerr(o.detach(), o_ref) < 1e-5 and relerr(s.detach(), s_ref) < 1e-5
    g = torch.Generator().manual_seed(3)
    go, gs = torch.randn(o.shape, generator=g), torch.randn(s.shape, generator=g)
    (o * go).sum().add((s * gs).sum()).backward()

    ref = {k: (t.double().requires_grad_() if torch.is_tensor(t) else t) for k, t in x.items()}
    d = x.get("decay")
    if isinstance(d, OuterGate):
        ref["rate"], ref["channel"] = d.rate.double().requires_grad_(), d.channel.double().requires_grad_()
        ref["decay"] = ref["rate"][..., None] * ref["channel"][..., None, :]
    ro, rs = linear_attention_ref(**{k: ref[k] for k in ("q", "k", "v", "initial_state")},
                                  decay=ref.get("decay"), log_decay=d is not None, return_state=True)
    (ro * go.double()).sum().add((rs * gs.double()).sum()).backward()
    pairs = [(leaves[n].grad, ref[n].grad) for n in ("q", "k", "v", "initial_state")]
    if kind == "outer":
        pairs += [(leaves["decay"].rate.grad, ref["rate"].grad), (leaves["decay"].channel.grad, ref["channel"].grad)]
    elif kind is not None:
        pairs.append((leaves["decay"].grad, ref["decay"].grad))
    for got, want in pairs:
        assert relerr(got, want) < 1e-4


def test_autograd_keeps_no_per_position_states():
    """Mamba's shapes (Dm = 64 channels, S = 16 states): what autograd saves for the backward is
    the inputs and the N/C states entering the chunks, far below the N·Dm·S states themselves
    (autograd through the steps kept several times that)."""
    from codegen.linear.torch_impl import selective_scan

    n, dm, s = 2048, 64, 16
    g = torch.Generator().manual_seed(0)
    u, dt = torch.randn(1, dm, n, generator=g), torch.rand(1, dm, n, generator=g) * 0.1
    a, bm, c = -torch.rand(dm, s, generator=g), torch.randn(1, s, n, generator=g), torch.randn(1, s, n, generator=g)
    leaves = [x.requires_grad_() for x in (u, dt, a, bm, c)]
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = selective_scan(*leaves, chunk=32)
    states = n * dm * s * 4                                   # bytes of all N states, fp32
    assert sum(seen.values()) < 0.5 * states, f"saved {sum(seen.values()) / states:.2f}× the states"
    y.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in leaves)
