"""``relative(heads, buckets, max_distance, bidirectional)``: T5's log-bucketed relative
position bias (Raffel et al. 2020), against the bucket function of mesh-tensorflow's
``_relative_position_bucket`` written out here per pair, and the attention that adds it
(materialised and tiled, forward and the table's gradient) against a dense reference."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch backend needs torch")

import seqdsl  # noqa: E402
from codegen.softmax.scores import t5_bucket  # noqa: E402


def t5_paper_bucket(relative_position: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """mesh_tensorflow.transformer.attention._relative_position_bucket, one pair at a time
    (relative_position = memory_position − query_position = j − i)."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_equal_the_paper(bidirectional):
    d = torch.arange(-300, 301)
    got = t5_bucket(d, 32, 128, bidirectional)
    want = torch.tensor([t5_paper_bucket(int(x), bidirectional, 32, 128) for x in d])
    assert torch.equal(got, want)
    # T5's facts: 32 buckets, exact up to 8 (bidirectional, per side) / 16, the last bucket from 128 on
    assert int(got[d == -300]) == (15 if bidirectional else 31)


SRC = """
dim B = 2, H = 3, N = 63, Dh = 8
model m(q: [B, H, N, Dh], k: [B, H, N, Dh], v: [B, H, N, Dh]) -> [B, H, N, Dh] {
  return mix(q, k, v, score = dot(bias = relative(heads = H, buckets = 16, max_distance = 40,
             bidirectional = BI)), mask = MASK, norm = softmax, algorithm = ALGO)
}
"""


@pytest.mark.parametrize("algo", ["materialized", "tiled"])
@pytest.mark.parametrize("bidirectional, mask", [(True, "full()"), (False, "causal()")])
def test_attention_with_the_bias_equals_a_dense_reference(algo, bidirectional, mask):
    src = SRC.replace("BI", str(bidirectional).lower()).replace("MASK", mask).replace("ALGO", algo)
    model = seqdsl.load(src)
    table = model.relative.relative_bias
    with torch.no_grad():
        table.normal_(generator=torch.Generator().manual_seed(1))
    q, k, v = model.example_inputs()
    out = model(q, k, v)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    got_grad = table.grad.clone()
    # dense reference: softmax(q kᵀ/√Dh + table[h, bucket(j − i)] (+ causal)) v
    ref_table = table.detach().clone().requires_grad_(True)
    i = torch.arange(63)[:, None]
    j = torch.arange(63)[None, :]
    idx = torch.tensor([[t5_paper_bucket(int(b - a), bidirectional, 16, 40) for b in range(63)] for a in range(63)])
    s = q @ k.transpose(-1, -2) / math.sqrt(8) + ref_table[:, idx]
    if mask == "causal()":
        s = s.masked_fill(j > i, float("-inf"))
    ref = torch.softmax(s, -1) @ v
    (ref * g).sum().backward()
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert float((got_grad - ref_table.grad).norm() / ref_table.grad.norm()) < 1e-4


def test_the_triton_backend_states_its_fallback():
    from codegen.masks import Causal
    from codegen.softmax.triton_gen import unsupported
    reason = unsupported(Causal(0), bias_kind="t5:128:uni")
    assert reason and "t5:128:uni" in reason
