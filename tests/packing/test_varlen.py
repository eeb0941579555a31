"""codegen/varlen.py: documents from ids and cu_seqlens, positions, the padded batch, pack()."""

from __future__ import annotations

import pytest
import torch

from codegen.varlen import Documents, canonical, pack


def test_ids_are_renumbered_and_positions_restart():
    d = Documents.from_ids(torch.tensor([[7, 7, 3, 3, 3, 7], [0, 1, 1, 1, 2, 2]]))
    assert d.ids.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]]
    assert d.positions.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 0, 1]]
    assert d.count == 6 and d.longest == 3
    assert canonical(torch.tensor([5, 5, 9, 5])).tolist() == [0, 0, 1, 2]


def test_cu_seqlens_give_the_same_documents():
    d = Documents.from_cu_seqlens([0, 3, 4, 9], n=11)
    assert d.ids.tolist() == [[0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3]]
    with pytest.raises(ValueError, match="cu_seqlens"):
        Documents.from_cu_seqlens([0, 5, 3])


def test_padded_batch_round_trip_with_gradients():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 1]])
    d = Documents.from_ids(ids)
    x = torch.randn(2, 3, 7, 4, requires_grad=True)          # [B, H, N, C]: sequence at −2
    p = d.to_padded(x, axis=-2)
    assert p.shape == (5, 3, 6, 4)
    assert torch.equal(p[1, :, :3], x[0, :, 2:5]) and bool((p[1, :, 3:] == 0).all())
    back = d.from_padded(p, axis=-2)
    assert torch.equal(back, x)
    back.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_pack_first_fit_and_padding_document():
    seqs = [torch.arange(3), torch.arange(4) + 10, torch.arange(2) + 20]
    rows, ids = pack(seqs, 6)
    assert rows.tolist() == [[0, 1, 2, 0, 0, 0], [10, 11, 12, 13, 20, 21]]
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="does not fit"):
        pack(seqs, 3)


def test_sizes_that_do_not_fit_are_refused():
    d = Documents.from_ids(torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match=r"doc_ids are \[1, 3\] but the sequence is \[B=2, N=3\]"):
        d.check(2, 3, "mixer")
    with pytest.raises(ValueError, match="N=4"):
        d.check(1, 4, "mixer")
    d.check(1, 3, "mixer")
