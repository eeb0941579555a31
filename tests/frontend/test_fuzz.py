"""Random mutations of the examples: ``seqdsl.check`` either succeeds or raises SeqError with
a usable position (syntax errors always have one); never any other exception.

Mutations work on characters (delete, insert punctuation, swap, duplicate, truncate) and on
tokens (delete, duplicate, swap, replace with another token of the corpus). The corpus is the
reference mixers and a few small models that cover the higher-order builtins; bounded to
150 examples in all so that it runs in well under a minute.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import seqdsl

ROOT = Path(__file__).resolve().parents[2]
SMALL_MODELS = ("deq", "switch_moe", "luna", "synthesizer", "transformer_decoder", "h3", "s5", "block_recurrent")
FILES = sorted((ROOT / "examples" / "mixers").glob("*.seq")) + \
    [p for name in SMALL_MODELS if (p := ROOT / "examples" / "models" / f"{name}.seq").exists()]
SOURCES = [p.read_text() for p in FILES]

TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_]\w*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\*\*|//|->|==|!=|<=|>=|\.\.\.|\S')
TOKENS = sorted({m.group() for s in SOURCES for m in TOKEN.finditer(s)})
PUNCT = list("()[]{}=,:;.+-*/%@&|~<>!\"#\n \\$") + ["->", "**", "//", "==", "..."]
WORDS = ["mix", "causal", "repeat", "if", "then", "else", "return", "dim", "option", "param", "require",
         "import", "N", "D", "x", "0", "-1", "1e9", "0.0", "softmax", "none", "true", "model", "in", "as",
         "shared", "\"a\"", "None", "not", "and"]

SYNTAX = ("syntax error", "unexpected character", "unterminated string", "unexpected end of file")
FIRST_LINE = re.compile(r"^<string>(:\d+:\d+)?: error: \S")


@st.composite
def char_mutations(draw) -> str:
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "swap", "truncate", "duplicate"]))
        if kind == "delete":
            text = text[:pos] + text[min(len(text), pos + draw(st.integers(1, 12))):]
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


@st.composite
def token_mutations(draw) -> str:
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 3))):
        spans = [m.span() for m in TOKEN.finditer(text)]
        if len(spans) < 2:
            break
        i = draw(st.integers(0, len(spans) - 1))
        a, b = spans[i]
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
        if kind == "delete":
            text = text[:a] + text[b:]
        elif kind == "duplicate":
            text = text[:b] + " " + text[a:b] + text[b:]
        elif kind == "swap":
            j = draw(st.integers(0, len(spans) - 1).filter(lambda j, i=i: j != i))
            (a, b), (c, d) = sorted([spans[i], spans[j]])
            text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
        else:
            text = text[:a] + draw(st.sampled_from(TOKENS + WORDS)) + text[b:]
    return text


def check_only_seq_errors(text: str) -> None:
    text = text if "\n" in text else text + "\n"     # a one-line text without "\n" could name a file
    try:
        seqdsl.check(text)
    except seqdsl.SeqError as err:
        rendered = err.render()
        assert FIRST_LINE.match(rendered.splitlines()[0]), rendered
        if err.message.startswith(SYNTAX):
            assert err.line >= 1 and err.column >= 1, rendered
        if err.line >= 1 and err.file == "<string>":
            lines = text.splitlines()
            assert err.line <= len(lines) + 1, rendered
            if err.line <= len(lines):
                assert err.column <= len(lines[err.line - 1]) + 1, rendered


COMMON = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(char_mutations())
@example("")
@example("mixer")
@example("dim N = 4\nmixer m(x: [N]) {\n  return x\n")
@example('dim N = 4\nmixer m(x: [N]) {\n  y = "abc\n  return x\n}\n')
def test_character_mutations_raise_only_seq_errors(text):
    check_only_seq_errors(text)


@COMMON
@given(token_mutations())
@example("dim N = 4\nmixer m(x: [N]) {\n  return x[N:0]\n}\n")
@example("dim N = 4\nmixer m(x: [N]) {\n  return x ** x\n}\n")
@example("dim N = 4, D = 0\nmixer m(x: [N]) {\n  return x\n}\n")
def test_token_mutations_raise_only_seq_errors(text):
    check_only_seq_errors(text)
