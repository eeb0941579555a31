"""What a rank holds while sequence-parallel softmax attention runs, beyond its inputs (q, k, v
rows) and its output (o and the fp32 log-sum-exp): the formulas that the analysis
(``seqdsl/analysis/distributed.py``, with sympy symbols) and the cost rule
(``softmax.choose``, with numbers) share. No torch here: the analysis imports it.

Forward, read off the code of ``softmax.py`` (the measurement beside it:
benchmarks/distributed.py):

- **ring**: the K/V block held, as one flat buffer (a copy of the rank's own K and V at the
  first step; it is sent as it is), and the block arriving: 2·(|k| + |v|) of n rows; the running
  maximum and row sum in fp32 (the running weighted sum is the output, divided in place);
  one tile of scores, turned into probabilities in place, ROWS·KEYS per (batch, head), and
  its keep-mask and its negation (bool; counted per head: an overestimate for masks without
  a per-head term); the tile's [ROWS, D] temporaries (a contiguous copy of the key and value
  rows, the product with the values, the rescaled accumulator): 2·ROWS·(dk + dv).
- **Ulysses**, in rounds of ``ULYSSES_HEADS`` heads per rank (a fraction f = P·ULYSSES_HEADS/H of
  every tensor per round; one round, f = 1, when the heads do not split evenly): at the worst
  moment of a round, the third all-to-all in, q and k of the round resharded (f·(|q| + |k|)),
  v's send buffer, its receive buffer and the resharded v (3f·|v|).
"""

from __future__ import annotations

ROWS = 512     # query rows per tile of the ring
KEYS = 512     # keys per tile: the scores of one tile are ROWS × KEYS, whatever n = N/P
ULYSSES_HEADS = 1   # heads per rank in one round of Ulysses' all-to-alls


def _min(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return min(a, b)
    import sympy

    return sympy.Min(a, b)


def ring_bytes(k_elems, v_elems, bh, n, itemsize: int = 4):
    """Bytes the ring holds beyond inputs and output: ``k_elems``, ``v_elems`` the elements of
    the rank's K and V rows, ``bh`` batch × heads, ``n`` the rank's rows."""
    blocks = 2 * (k_elems + v_elems) * itemsize
    stats = 2 * bh * n * 4
    tile = bh * _min(n, ROWS) * _min(n, KEYS)
    rows = bh * _min(n, ROWS) * (k_elems + v_elems) / (bh * n)          # ROWS rows of width dk + dv
    return blocks + stats + tile * (4 + 2) + 2 * rows * 4


def ulysses_fraction(heads, nproc):
    """The fraction of every tensor one round of Ulysses reshards (1 when the heads do not
    split evenly over the ranks: one round)."""
    if isinstance(heads, int) and isinstance(nproc, int):
        return min(1, nproc * ULYSSES_HEADS / heads) if heads % nproc == 0 else 1
    return _min(1, nproc * ULYSSES_HEADS / heads)


def ulysses_bytes(q_elems, k_elems, v_elems, heads, nproc, itemsize: int = 4):
    """Bytes Ulysses holds beyond inputs and output (elements of the rank's q, k, v rows)."""
    return ulysses_fraction(heads, nproc) * (q_elems + k_elems + 3 * v_elems) * itemsize
