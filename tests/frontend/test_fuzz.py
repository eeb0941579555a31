"""Random mutations of the examples raise only SeqError (with a position), never anything else."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqdsl

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p.read_text() for p in sorted((ROOT / "examples" / "mixers").glob("*.seq"))] + \
    [(ROOT / "examples" / "models" / name).read_text() for name in ("h3.seq", "mamba.seq", "retnet.seq")]
PUNCT = list("()[]{}=,:;.+-*/%@&|~<>!\"#\n ") + ["->", "**", "//", "==", "..."]
WORDS = ["mix", "causal", "repeat", "if", "return", "dim", "N", "D", "x", "0", "-1", "1e9", "softmax",
         "none", "true", "param", "model", "in", "as", "shared", "import", "\"a\"", "None"]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "swap", "truncate", "duplicate"]))
        if kind == "delete":
            end = min(len(text), pos + draw(st.integers(1, 12)))
            text = text[:pos] + text[end:]
        elif kind == "insert":
            text = text[:pos] + draw(st.sampled_from(PUNCT + WORDS)) + text[pos:]
        elif kind == "swap" and pos + 2 < len(text):
            text = text[:pos] + text[pos + 1] + text[pos] + text[pos + 2:]
        elif kind == "truncate":
            text = text[:pos]
        else:
            end = min(len(text), pos + draw(st.integers(1, 30)))
            text = text[:end] + text[pos:end] + text[end:]
    return text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_raise_only_seq_errors(text):
    try:
        seqdsl.check(text if "\n" in text else text + "\n")
    except seqdsl.SeqError as err:
        first = err.render().splitlines()[0]
        assert re.match(r"^<string>(:\d+:\d+)?: error: \S", first), first
        assert err.line >= 0
