"""``sparsity = <fixed mask>``: the parameter counts (check, analysis) are the trained
non-zeros the mask keeps, equal to the non-zeros of the generated module's mask; the dense
storage is reported separately (``param_count_stored``, and in ``seqdsl check``)."""

from __future__ import annotations

import pytest

import seqdsl

SRC = """
dim B = 2, N = 8, D = 64, F = 32
model m(x: [B, N, D]) -> [B, N, D] {
  h = linear(x, F, bias = false, sparsity = butterfly(8))
  return mlp(h, D, out = D, bias = false, sparsity = butterfly(16))
}
"""


def test_counts_are_the_masks_non_zeros():
    torch = pytest.importorskip("torch", reason="the module's masks need torch")
    checked = seqdsl.check(SRC)
    model = seqdsl.load(SRC)
    masks = {k: v for k, v in model.state_dict().items() if k.endswith("_mask")}
    trained = sum(int(v.sum()) for v in masks.values())
    dense = sum(p.numel() for p in model.parameters())
    assert trained < dense
    assert int(checked.value(checked.param_count)) == trained
    assert int(checked.value(checked.stored_param_count)) == dense == 64 * 32 + 64 * 32 + 64 * 64
    total = seqdsl.analyze(SRC).to_dict()["total"]
    assert total["values"]["param_count"] == trained
    assert total["values"]["param_count_stored"] == dense
    # the weights a mask zeroes get no gradient: the non-zeros are what trains
    x = torch.randn(2, 8, 64)
    model(x).square().sum().backward()
    nonzero_grads = sum(int((p.grad != 0).sum()) for p in model.parameters())
    assert nonzero_grads <= trained


def test_the_check_view_counts_each_blocks_non_zeros():
    """``seqdsl check`` lists parameters per block: a sparse layer inside counts its non-zeros."""
    from seqdsl.report import check_report

    src = """
dim B = 2, N = 8, D = 64, F = 32
block up(x: [B, N, D]) -> [B, N, F] {
  return linear(x, F, bias = false, sparsity = butterfly(8, factors = 1))
}
model m(x: [B, N, D]) -> [B, N, F] {
  return up(x)
}
"""
    checked = seqdsl.check(src)
    trained = int(checked.value(checked.param_count))
    assert trained == 4 * 2 * 8 * 8 < 64 * 32           # [32, 64]: 4 block rows, each keeping 2 blocks of 8 × 8
    line = next(x for x in check_report(checked).splitlines() if "block up" in x)
    assert line.endswith("[params butterfly_pairs(F, D, 8, 1, 0)]"), line      # not D*F: the non-zeros
    assert int(checked.value(checked.param_count)) == trained
