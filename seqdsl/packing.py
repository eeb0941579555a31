"""``seqdsl.pack``: documents of different lengths packed into rows, with their boundaries.

A generated module takes the boundaries as ``forward(..., doc_ids=ids)`` (docs/modules.md,
"Packed rows"); this builds both from a list of token tensors. The work is in
``codegen/varlen.py`` (imported on call: the front end never needs torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pack(sequences: Sequence[Any], length: int | None = None, *, pad_value: int | float = 0,
         rows: int | None = None) -> tuple[Any, Any]:
    """Pack ``sequences`` (tensors [L_i] of token ids, or [L_i, C]) into rows of ``length``
    positions, in order, first fit (default: one row of the total length). Returns
    ``(packed [R, length, …], doc_ids [R, length])``; a row's unused tail is ``pad_value``,
    a document of its own whose outputs are to be ignored. ``model(packed, doc_ids=doc_ids)``
    then mixes every document as if it were alone in its row."""
    from codegen.varlen import pack as pack_rows

    return pack_rows(sequences, length, pad_value=pad_value, rows=rows)
