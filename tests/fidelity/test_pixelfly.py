"""Pixelated Butterfly's weight pattern and parameter count against the released construction
(HazyResearch/fly, issue 12).

The released pattern (src/models/layers/blocksparse_linear.py,
``FlatBlockButterflySparsityConfig(butterfly_size = 16, n_factors = 2, block = 32).make_layout``)
is written out below from its definition: the union of the first ``n_factors`` butterfly factor
matrices of size s (src/ops/butterfly_factor.py: factor t joins i and j when they are equal or
differ in bit t only), each cell repeated over (out/s) × (in/s) weights, then reduced to the
32 × 32 blocks holding any kept weight. ``butterfly(32, factors = 2, size = 16)`` must give the
same mask at GPT-2-small's MLP sizes, in the generated module and in the analysis' counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import seqdsl

torch = pytest.importorskip("torch", reason="the generated module's mask needs torch")

ROOT = Path(__file__).resolve().parents[2]
D, F = 768, 3072


def released_layout(out_f: int, in_f: int, size: int, factors: int, block: int):
    """[out/block, in/block] bool: make_layout of FlatBlockButterflySparsityConfig, written out."""
    i = torch.arange(size)[:, None]
    j = torch.arange(size)[None, :]
    cells = i == j                                   # the identity: every factor keeps it
    for t in range(factors):                         # factor t: i, j differ in bit t only
        cells |= (i ^ j) == (1 << t)
    dense = cells.repeat_interleave(out_f // size, 0).repeat_interleave(in_f // size, 1)
    return dense.reshape(out_f // block, block, in_f // block, block).any(3).any(1)


def sparse_linear(d_in: int, d_out: int) -> str:
    return (f"dim B = 1, N = 2, Din = {d_in}\nmodel m(x: [B, N, Din]) -> [B, N, {d_out}] {{\n"
            f"  return linear(x, {d_out}, bias = false, sparsity = butterfly(32, factors = 2, size = 16))\n}}\n")


@pytest.mark.parametrize("d_in,d_out", [(D, F), (F, D)], ids=["up", "down"])
def test_the_generated_mask_is_the_released_layout(d_in, d_out):
    expected = released_layout(d_out, d_in, 16, 2, 32)
    assert int(expected.sum()) == 480                 # 480 of 2304 blocks of 32 × 32: 20.8%
    src = sparse_linear(d_in, d_out)
    model = seqdsl.load(src)
    (mask,) = (v for k, v in model.state_dict().items() if k.endswith("weight_mask"))
    blocks = mask.reshape(d_out // 32, 32, d_in // 32, 32)
    assert bool((blocks.amin((1, 3)) == blocks.amax((1, 3))).all()), "whole blocks"
    assert torch.equal(blocks.amax((1, 3)).bool(), expected)
    nonzeros = 480 * 32 * 32
    checked = seqdsl.check(src)
    assert int(checked.value(checked.param_count)) == nonzeros
    assert seqdsl.analyze(src).to_dict()["total"]["values"]["param_count"] == nonzeros


def test_the_stretch_covers_sizes_the_butterfly_does_not_divide():
    """Sides that are not a multiple of s (or of the block): the cells are ⌊i·s / n'⌋ over the
    block-padded side n' (the released rule when s divides n'), and the edge blocks crop."""
    from codegen import masks as RM
    from seqdsl.analysis.butterfly import kept_pairs

    m = RM.Butterfly(8, factors=1, size=4).dense(20, 44)
    rows = torch.arange(24)[:, None] * 4 // 24                 # n' = 24: cells of 6 rows
    cols = torch.arange(48)[None, :] * 4 // 48                 # n' = 48: cells of 12 columns
    cell = ((rows ^ cols) == 0) | ((rows ^ cols) == 1)
    expected = cell.reshape(3, 8, 6, 8).any(3).any(1).repeat_interleave(8, 0).repeat_interleave(8, 1)[:20, :44]
    assert torch.equal(m, expected)
    assert kept_pairs(20, 44, 8, 1, 4) == int(expected.sum())


def test_factors_limit_the_attention_pattern():
    """In a mix, factors = k keeps blocks a, b with a XOR b ∈ {0, 1, …, 2^(k−1)} (no stretch)."""
    from codegen import masks as RM

    got = RM.Butterfly(4, factors=2).dense(64, 64)
    a = torch.arange(64)[:, None] // 4
    b = torch.arange(64)[None, :] // 4
    x = a ^ b
    assert torch.equal(got, (x == 0) | (x == 1) | (x == 2))


def test_bad_values_are_positioned_errors(check_text):
    base = "dim B = 1, N = 64, D = 64\nmodel m(x: [B, N, D]) -> [B, N, D] {\n  return linear(x, D, sparsity = %s)\n}\n"
    for call, says in (("butterfly(8, size = 12)", "power of two"), ("butterfly(8, factors = 0)", "at least 1"),
                       ("butterfly(8, factors = 5, size = 16)", "has 4 factors")):
        with pytest.raises(seqdsl.SeqError, match=says) as e:
            check_text(base % call)
        assert e.value.pos is not None and e.value.pos.line == 3
    qkv = ("dim B = 1, H = 2, N = 16, Dh = 4\nmodel m(q: [B, H, N, Dh]) -> [B, H, N, Dh] {\n"
           "  return mix(q, q, q, mask = butterfly(4, size = 4), norm = softmax)\n}\n")
    with pytest.raises(seqdsl.SeqError, match="weight's shape") as e:
        check_text(qkv)
    assert e.value.pos.line == 3


def pixelfly_gpt2() -> int:
    """The released GPT-2-small Pixelfly (fbbflylr): GPT-2 small (HF GPT2LMHeadModel, output tied)
    whose MLP linears are SparseLRLinear: BlockSparseLinear (480 blocks of 32 × 32 kept, no
    bias) + LowRank (rank 32, no bias) + gate Linear(in, 1) + bias. 82,608,408."""
    d, f, v, n, layers, rank = 768, 3072, 50257, 1024, 12, 32
    nnz = int(released_layout(f, d, 16, 2, 32).sum()) * 32 * 32
    sparse_lr = lambda i, o: nnz + rank * (i + o) + (i + 1) + o  # noqa: E731
    attention = d * 3 * d + 3 * d + d * d + d                    # c_attn, c_proj
    layer = 2 * 2 * d + attention + sparse_lr(d, f) + sparse_lr(f, d)
    return v * d + n * d + layers * layer + 2 * d


def test_parameter_count_of_the_example_is_the_released_models(checked_example):
    checked = checked_example(ROOT / "examples" / "models" / "pixelfly.seq")
    assert int(checked.value(checked.param_count)) == pixelfly_gpt2() == 82_608_408
