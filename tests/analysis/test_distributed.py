"""``analyze complexity --nproc P``: per-rank costs and bytes sent as formulas in N and P."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy

from seqdsl.analysis import analyze_graph
from seqdsl.analysis.distributed import analyze_distributed, largest_n, parse_memory
from seqdsl.api import check

ROOT = Path(__file__).resolve().parents[2]
N, P = sympy.symbols("N P", positive=True, integer=True)


def section(path: str, nproc: int, memory: float | None = None, **sizes) -> dict:
    c = check(ROOT / "examples" / path, **sizes)          # one elaboration for the report and the graph
    return analyze_distributed(c.graph, analyze_graph(c.graph, c.entry, c.sizes), nproc, memory)


def parse(text: str) -> sympy.Expr:
    """A formula of the section (every name a positive integer symbol, N and P included)."""
    names = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", text)) - {"Min", "Max"}
    return sympy.sympify(text, locals={k: sympy.Symbol(k, positive=True, integer=True) for k in names})


def mixer_row(sec: dict) -> dict:
    return next(r for r in sec["layers"] if r["strategy"] not in ("none", "replicated"))


def test_softmax_strategies_and_their_traffic():
    """8 heads over 4 ranks: Ulysses, 4 tensors of n rows, (P−1)/P of each sent; over 3 ranks
    the heads do not split evenly: the ring, K and V sent P − 1 times."""
    sizes = dict(B=1, H=8, N=4096, Dh=64)
    uly = mixer_row(section("mixers/softmax_attention.seq", 4, **sizes))
    assert uly["strategy"] == "Ulysses all-to-all"
    B, H, Dh = sympy.symbols("B H Dh", positive=True, integer=True)
    want = (P - 1) / P * 4 * B * H * (N / P) * Dh * 4
    assert sympy.simplify(parse(uly["comm_bytes_per_rank"]) - want) == 0
    assert uly["values"]["comm_bytes_per_rank"] == pytest.approx(3 / 4 * 4 * 8 * 1024 * 64 * 4)
    ring = mixer_row(section("mixers/softmax_attention.seq", 3, **sizes))
    assert ring["strategy"] == "ring"
    n_rows = 4096 / 3
    assert ring["values"]["comm_bytes_per_rank"] == pytest.approx(2 * 2 * 8 * n_rows * 64 * 4)


def test_state_passing_sends_the_same_at_every_length():
    a = mixer_row(section("mixers/retention.seq", 4, B=1, H=4, N=1024, Dh=32))
    b = mixer_row(section("mixers/retention.seq", 4, B=1, H=4, N=65536, Dh=32))
    assert a["strategy"] == "state passing"
    assert "N" not in a["comm_bytes_per_rank"]
    assert a["values"]["comm_bytes_per_rank"] == b["values"]["comm_bytes_per_rank"] > 0
    assert b["values"]["flops_per_rank"] > 30 * a["values"]["flops_per_rank"]      # the work does split


def test_largest_n_fits_and_the_next_does_not():
    sec = section("mixers/softmax_attention.seq", 4, memory=2**30, B=1, H=8, N=4096, Dh=64)
    mem = parse(sec["memory_per_rank"])
    at = lambda n: float(mem.xreplace({s: {"N": n, "P": 4, "B": 1, "H": 8, "Dh": 64}.get(s.name, 1)  # noqa: E731
                                       for s in mem.free_symbols}))
    m = sec["max_n"]
    assert at(m) <= 2**30 < at(m + 1)
    assert largest_n(lambda n: 10 * n, 5) is None
    assert parse_memory("24GB") == 24e9 and parse_memory("1GiB") == 2**30
    with pytest.raises(ValueError, match="not a size"):
        parse_memory("3 parsecs")


def test_global_tokens_send_their_rows_only():
    """Longformer's global mixer (G replicated queries over every key): each rank sends its
    partial (output, log-sum-exp) of the G rows to the P − 1 others, independent of N."""
    sec = section("models/longformer.seq", 4, L=2)        # two layers: the same rows, a quicker analysis
    row = next(r for r in sec["layers"] if r["name"].endswith("attention.global"))
    assert row["strategy"] == "replicated queries, LSE merge"
    B, G, D, H = sympy.symbols("B G D H", positive=True, integer=True)
    assert sympy.simplify(parse(row["comm_bytes_per_rank"]) - 4 * (P - 1) * B * G * (D + H)) == 0
    assert N not in parse(row["comm_bytes_per_rank"]).free_symbols


def test_softmax_memory_of_both_strategies_and_the_rule_under_a_budget():
    """Each softmax layer states what it holds and what the other strategy would hold; with
    ``--memory`` the largest N follows the rule (Ulysses while it fits, then the ring): 4 heads
    on 4 ranks, where the ring holds less at large N; 8 heads on 2 ranks, where Ulysses does."""
    tight = section("mixers/softmax_attention.seq", 4, memory=2**30, B=1, H=4, N=4096, Dh=64)
    row = mixer_row(tight)
    assert row["strategy"] == "Ulysses all-to-all" and row["alternative"]["strategy"] == "ring"
    assert tight["max_n_strategy"] == "ring"
    ring_mem, uly_mem = parse(tight["memory_per_rank_ring"]), parse(tight["memory_per_rank"])
    vals = {"P": 4, "B": 1, "H": 4, "Dh": 64}
    at = lambda e, n: float(e.xreplace({s: {**vals, "N": n}.get(s.name, 1) for s in e.free_symbols}))  # noqa: E731
    m = tight["max_n"]
    assert at(ring_mem, m) <= 2**30 < at(ring_mem, m + 1) and at(uly_mem, m) > 2**30
    roomy = section("mixers/softmax_attention.seq", 2, memory=2**30, B=1, H=8, N=4096, Dh=64)
    assert roomy["max_n_strategy"] == "as chosen"
    assert mixer_row(roomy)["values"]["held_bytes_per_rank"] < mixer_row(roomy)["alternative"]["value"]
