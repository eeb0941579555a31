"""Which layers stop a model from decoding token by token, and why (``analyze --decode``).

A step sees one new position; a layer can take part only if its output at a position reads
that position and earlier ones, through a state its structure defines. The rules live in
the IR (seqdsl/ir/decode_rules.py), where the code generator's decoding plan
(codegen/decode/plan.py) reads them too: the two agree by construction
(tests/analysis/test_decode.py checks it on the examples).
"""

from __future__ import annotations

import sympy

from seqdsl.ir import decode_rules as R
from seqdsl.ir import decode_window as W
from seqdsl.ir.decode_rules import seq_dim  # noqa: F401  (the sequence dim, for decode.py)
from seqdsl.ir.graph import Graph, Node
from seqdsl.ir.tables import PrefixTables, prefix_tables


def entry_refusal(g: Graph, n: sympy.Symbol | None) -> str | None:
    """Why the entry as a whole cannot decode along ``n`` (None: its layers decide). A
    mixer entry with several inputs is costed per position too; ``step`` itself takes
    models whose one input is the token ids."""
    if n is None:
        return "the entry has no sequence dim N"
    return R.output_refusal(g, n, W.windows(g, n))


def refusal(g: Graph, node: Node, n: sympy.Symbol, prefixed: bool = False,
            win: W.Windows | None = None, tables: PrefixTables | None = None) -> str | None:
    """Why ``node`` cannot run one position at a time (None: it can). ``prefixed``: inside a
    segment recurrence's step, where an axis P + n holds P rows of memory first. ``win``: the
    graph's window slices (seqdsl/ir/decode_window.py), ``tables`` its prefix-consistent
    position tables (seqdsl/ir/tables.py); found when not given."""
    try:
        if prefixed:
            R.classify(g, node, n, prefixed=True)
        else:
            win = W.windows(g, n) if win is None else win
            tables = prefix_tables(g, n) if tables is None else tables
            R.decode_class(g, node, n, win, tables)
    except R.Refuse as why:
        return why.why
    return None
