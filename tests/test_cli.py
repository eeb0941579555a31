"""The command line (SPEC §3) end to end, and the layer-graph drawing behind ``seqdsl graph``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sympy
from typer.testing import CliRunner

from seqdsl import __version__
from seqdsl.cli import app
from seqdsl.ir.graph import Graph, OpKind, Port
from seqdsl.ir.types import TensorType, dim_symbol
from seqdsl.viz import dot_quote, to_dot, write_graph

ROOT = Path(__file__).resolve().parents[1]
SOFTMAX = ROOT / "examples" / "mixers" / "softmax_attention.seq"

runner = CliRunner()


def invoke(*args: str):
    """Run the CLI in-process; returns (result, stdout, stdout and stderr together)."""
    result = runner.invoke(app, [str(a) for a in args])
    # Click >= 8.2 keeps stderr apart from stdout and `output` holds both, interleaved.
    try:
        stdout = result.stdout
    except ValueError:      # older Click: stderr mixed into stdout
        stdout = result.output
    return result, stdout, result.output


BAD = """dim N = 4
mixer f(x: [N]) -> [N] {
  return foo(x)
}
"""

# A block whose rearrange pattern holds a line break and a tab: the only odd characters a
# pattern can carry past the checker (quotes and braces are rejected as axis names).
ODD_PATTERN = r"""dim B, N = 8, D = 4
block odd(x: [B, N, D]) -> [B, N, D] {
  return rearrange(x, "b n d ->\n b\tn d")
}
model m(x: [B, N, D]) -> [B, N, D] {
  repeat 2 as i {
    x = odd(x)
  }
  return x
}
"""


# ---- the DOT checks used below -----------------------------------------------------


def _unescaped_quotes(line: str) -> int:
    """Double quotes in a DOT line that open or close a string (not written as \\")."""
    count, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            count += 1
        i += 1
    return count


def assert_valid_dot(text: str) -> None:
    """Structural validity without pydot: every line closes its strings, braces balance
    outside strings, and no statement line holds text outside the expected forms."""
    depth = 0
    for line in text.splitlines():
        assert _unescaped_quotes(line) % 2 == 0, f"unbalanced quotes: {line!r}"
        outside = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        assert '"' not in outside.replace('""', ""), line
        depth += outside.count("{") - outside.count("}")
        assert depth >= 0, line
        stripped = outside.strip()
        assert (not stripped or stripped.startswith(("digraph", "subgraph", "graph [", "node [", "edge [", "}"))
                or re.fullmatch(r"(n\d+|out\d+)( -> (n\d+|out\d+))? \[.*\];|(n\d+|out\d+) -> (n\d+|out\d+);",
                                stripped)), f"unexpected DOT statement: {line!r}"
    assert depth == 0


# ---- the commands ------------------------------------------------------------------


def test_version():
    result, out, _ = invoke("--version")
    assert result.exit_code == 0
    assert out.strip() == f"seqdsl {__version__}"


def test_help_lists_commands():
    result, out, _ = invoke("--help")
    assert result.exit_code == 0
    for command in ("check", "graph", "ir", "fmt", "builtins"):
        assert command in out


def test_check_ok():
    result, out, _ = invoke("check", SOFTMAX)
    assert result.exit_code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"ok: {SOFTMAX}"
    assert "entry: mixer softmax_attention" in lines
    assert "  q: [B, H, N, Dh]" in lines
    assert "parameters: 0" in lines
    assert "mixers: 1" in lines
    assert any(line.strip().startswith("mix: softmax:") and "mask=causal()" in line for line in lines)


def test_check_set_changes_the_mask():
    result, out, _ = invoke("check", SOFTMAX, "--set", "causal=0")
    assert result.exit_code == 0, out
    assert "mask=full()" in out


def test_check_bad_file(tmp_path):
    bad = tmp_path / "bad.seq"
    bad.write_text(BAD)
    result, _, text = invoke("check", bad)
    assert result.exit_code == 1
    assert re.search(rf"^{re.escape(str(bad))}:3:10: error: unknown name 'foo'", text, flags=re.M), text
    assert "Traceback" not in text
    assert isinstance(result.exception, SystemExit)


def test_check_bad_file_in_a_real_process(tmp_path):
    """As a user runs it: a separate process, stderr apart, nothing but the message."""
    bad = tmp_path / "bad.seq"
    bad.write_text(BAD)
    proc = subprocess.run([sys.executable, "-m", "seqdsl.cli", "check", str(bad)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"{bad}:3:10: error: unknown name 'foo'"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_missing_file_is_a_user_error(tmp_path):
    result, _, text = invoke("check", tmp_path / "nope.seq")
    assert result.exit_code == 1, text
    assert "error:" in text and "Traceback" not in text


def test_builtins_lists_mix():
    result, out, _ = invoke("builtins")
    assert result.exit_code == 0
    assert "mix(" in out and "rearrange(" in out


def test_ir_and_fmt():
    result, out, _ = invoke("ir", SOFTMAX)
    assert result.exit_code == 0
    assert out.startswith("graph softmax_attention {") and "mix[" in out
    result, out, _ = invoke("fmt", SOFTMAX)
    assert result.exit_code == 0
    assert "mixer softmax_attention(" in out


# ---- graph --------------------------------------------------------------------------


def test_graph_dot_on_stdout():
    result, out, _ = invoke("graph", SOFTMAX)
    assert result.exit_code == 0
    assert out.startswith('digraph "softmax_attention" {')
    assert "mix: softmax" in out and "mask: causal()" in out
    assert_valid_dot(out)


def test_graph_writes_dot(tmp_path):
    out_file = tmp_path / "x.dot"
    result, out, _ = invoke("graph", SOFTMAX, "-o", out_file)
    assert result.exit_code == 0, out
    assert f"wrote {out_file}" in out
    text = out_file.read_text()
    assert text.startswith("digraph")
    assert_valid_dot(text)
    # q, k and v each enter the mixer on an edge labelled with their role.
    for role in ("q", "k", "v"):
        assert re.search(rf'-> n\d+ \[label="{role}"\];', text)


def test_graph_writes_svg(tmp_path):
    out_file = tmp_path / "x.svg"
    result, out, _ = invoke("graph", SOFTMAX, "-o", out_file)
    assert result.exit_code == 0, out
    head = out_file.read_text()[:200].lstrip()
    assert head.startswith(("<?xml", "<svg"))
    assert "drawn with" in out          # the renderer used is always said


def test_graph_matplotlib_png_and_svg(tmp_path):
    """The fallback renderer, forced (the CLI uses Graphviz when it is installed)."""
    from seqdsl.api import check

    graph = check(ROOT / "examples" / "mixers" / "softmax_attention.seq").graph
    note = write_graph(graph, tmp_path / "g.png", renderer="matplotlib")
    assert note.startswith("drawn with matplotlib")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_graph(graph, tmp_path / "g.svg", renderer="matplotlib")
    assert "<svg" in (tmp_path / "g.svg").read_text()[:500]


def test_graph_unknown_format_is_a_user_error(tmp_path):
    result, _, text = invoke("graph", SOFTMAX, "-o", tmp_path / "x.pdf")
    assert result.exit_code == 1
    assert "error:" in text and "Traceback" not in text
    assert not (tmp_path / "x.pdf").exists()


def test_graph_clusters_and_params(tmp_path):
    src = tmp_path / "odd.seq"
    src.write_text(ODD_PATTERN)
    result, out, _ = invoke("graph", src, "--expand")
    assert result.exit_code == 0, out
    assert_valid_dot(out)
    assert out.count('subgraph "cluster_') == 2
    assert 'label="layers.0.odd: block odd"' in out
    # folded (the default): the two identical layers are one cluster, and the second
    # layer's input is a dashed edge back into the first
    result, folded, _ = invoke("graph", src)
    assert result.exit_code == 0, folded
    assert_valid_dot(folded)
    assert folded.count('subgraph "cluster_') == 1
    assert 'label="layers.{0,1}.odd ×2: block odd"' in folded
    assert re.search(r'n(\d+) -> n\1 \[label="x \(next layer\)", style=dashed, constraint=false\];', folded), folded
    # the pattern's line break is DOT's \n, its tab a space: never a raw control character
    assert "->\\n b n d" in out
    assert "\t" not in out
    result, with_params, _ = invoke("graph", src, "--params")
    assert result.exit_code == 0
    assert_valid_dot(with_params)


def _hostile_graph() -> Graph:
    """Names no .seq file can produce today, to test the escaping on its own."""
    t = TensorType((dim_symbol("N"), sympy.Integer(4)))
    g = Graph('evil" ] ; x -> y [label="pwn')
    a = g.add(OpKind.INPUT, 'in"put\\', (), t)
    b = g.add(OpKind.UNARY, 'layers.0.a\n"}; n0 -> n0; {"<b>', [Port('x"\\', a.id)], t, {"fn": 'f"}\\'})
    g.outputs = [Port("y", b.id)]
    return g


def test_dot_escapes_hostile_names():
    text = to_dot(_hostile_graph())
    assert_valid_dot(text)
    # Exactly the statements we wrote: two boxes, an output, two edges, nothing injected.
    assert len(re.findall(r"^\s*(n\d+|out\d+) \[", text, flags=re.M)) == 3
    assert len(re.findall(r" -> ", re.sub(r'"(\\.|[^"\\])*"', '""', text))) == 2
    assert '"in\\"put\\\\\\n' in text            # quote and backslash escaped, then the line break
    assert "\\n\\\"}; n0 -> n0; {\\\"<b>" in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")
def test_graphviz_reads_hostile_dot():
    """Graphviz's own parser: the hostile names come back as exactly three nodes, two edges."""
    proc = subprocess.run(["dot", "-Tplain"], input=to_dot(_hostile_graph()), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    records = [line.split()[0] for line in proc.stdout.splitlines()]
    assert records.count("node") == 3 and records.count("edge") == 2


def test_graphviz_failure_falls_back_to_matplotlib(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: simulated failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result, out, _ = invoke("graph", SOFTMAX, "-o", tmp_path / "x.svg")
    assert result.exit_code == 0, out
    assert "drawn with matplotlib: Graphviz dot failed: Error: simulated failure" in out, out
    assert "<svg" in (tmp_path / "x.svg").read_text()[:500]


def test_dot_quote():
    assert dot_quote('a"b') == '"a\\"b"'
    assert dot_quote("a\\nb") == '"a\\\\nb"'        # a user's backslash-n is text, not a line break
    assert dot_quote("a\nb") == '"a\\nb"'
    assert dot_quote("<x>{|}") == '"<x>{|}"'
    assert dot_quote("a\x00b\x1b") == '"a b "'


@pytest.mark.parametrize("args", [("graph",), ("check",)])
def test_missing_argument_is_usage_error(args):
    result, _, _ = invoke(*args)
    assert result.exit_code == 2


# ---- run ----------------------------------------------------------------------------

# The small sizes at which every example runs (shared with tests/codegen/test_examples_run.py).
SMALL = json.loads((ROOT / "tests" / "codegen" / "small_sizes.json").read_text())


def test_run_covers_every_example():
    assert sorted(SMALL) == sorted(p.relative_to(ROOT / "examples").as_posix()
                                   for p in (ROOT / "examples").glob("*/*.seq"))


@pytest.mark.parametrize("name", sorted(SMALL), ids=[n.replace("/", "-").removesuffix(".seq") for n in sorted(SMALL)])
def test_run_every_example(name):
    """`seqdsl run` times forward and backward on every example at small sizes; a module
    without parameters (softmax attention, a functional scan) differentiates its inputs."""
    sets = [a for k, v in SMALL[name].items() for a in ("--set", f"{k}={v}")]
    result, out, text = invoke("run", ROOT / "examples" / name, *sets, "--repeat", "1")
    assert result.exit_code == 0, text
    summary = out.splitlines()[-1]
    assert summary.startswith("forward+backward of ") and "best of 1" in summary, out
    shapes = re.search(r"inputs (.*); ([\d,]+) parameters$", summary)
    assert shapes, summary
    assert "64" in shapes[1]                        # N = 64 reached the random inputs
    no_params = shapes[2] == "0"
    assert ("no parameters: the backward pass computes the gradients of the" in out) == no_params, out
    if name == "mixers/softmax_attention.seq":
        assert no_params and "gradients of the 3 float input(s)" in out


def test_run_without_backward_and_bad_repeat():
    result, out, text = invoke("run", SOFTMAX, "--set", "N=32", "--no-backward", "--repeat", "1")
    assert result.exit_code == 0, text
    assert out.splitlines()[-1].startswith("forward of SoftmaxAttention")
    assert "no parameters" not in out
    result, _, text = invoke("run", SOFTMAX, "--repeat", "0")
    assert result.exit_code == 1 and "--repeat must be at least 1" in text
