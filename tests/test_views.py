"""Views that fold repetition (seqdsl/fold.py): the text of ``seqdsl check``, the
``analyze complexity`` table and ``seqdsl graph`` show identical repeat iterations once,
``layers.{0,1,3..11}.h3_block ×10``; ``--expand`` lists every one; the JSON keeps every layer;
the drawing of every example fits a page."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

import seqdsl
from seqdsl.analysis.table import _fmt, render
from seqdsl.cli import app
from seqdsl.fold import index_set, merge_lines, unit_of
from seqdsl.report import check_report
from seqdsl.viz import drawing, to_dot, write_graph

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "models"
HYBRID = MODELS / "h3_hybrid.seq"
H3_SET = "{0,2..7,9..11}"            # h3_hybrid: attention at 1 and 8 (safari pile/h3.yaml)
ATTN_SET = "{1,8}"
PAGE_PX = 3000                       # a side of a drawing at the default settings

runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _number(text: str) -> int:
    return int(text.replace(",", ""))


# ---- folding itself -------------------------------------------------------------------


@pytest.mark.parametrize("indices, text", [
    ([0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11], "{0,1,3..11}"),
    ([2, 6], "{2,6}"),
    ([i for i in range(128) if i % 4 != 3], "{0..126∖3,7,…,123}"),   # three local layers, then one strided
    ([0, 1, 2], "{0..2}"),                 # three consecutive: a range
    ([0, 1], "{0,1}"),
    ([7], "{7}"),
    (list(range(0, 128, 2)), "{0,2,…,126}"),  # every other layer
    ([1, 3, 4, 5], "{1,3..5}"),            # not {1,3,…,5}: a range is always consecutive
    ([0, 2, 4], "{0,2,4}"),                # a short stride stays a list
    ([9, 3, 5, 4, 3], "{3..5,9}"),         # unsorted, repeated
])
def test_index_set(indices, text):
    assert index_set(indices) == text


def test_unit_of():
    u = unit_of("layers.3.h3_block.h3.y")
    assert (u.path, u.template, u.index) == ("layers.3", "layers.{}", 3)
    u = unit_of("enc.layers_1.12.blk.q")               # a second repeat, inside a layer
    assert (u.path, u.template, u.index) == ("enc.layers_1.12", "enc.layers_1.{}", 12)
    assert unit_of("layers.4.recurrent/step/xl.y").path == "layers.4"   # a path through a body
    assert unit_of("latents.y") is None and unit_of("rotary_1") is None


def test_merge_lines():
    lines = [f"a.y: random_blocks(R, seed={i}) [B, N]" for i in range(12)]
    assert merge_lines(lines) == "a.y: random_blocks(R, seed={0..11}) [B, N]"
    assert merge_lines(["x: causal()", "x: full()"]) is None


# ---- check -----------------------------------------------------------------------------


def test_check_folds_the_hybrid():
    out = invoke("check", HYBRID)
    lines = out.splitlines()
    h3 = [line for line in lines if line.startswith(f"  layers.{H3_SET}.h3_block ×10: block h3_block")]
    attn = [line for line in lines if line.startswith(f"  layers.{ATTN_SET}.attention_block ×2: block attention_block")]
    assert len(h3) == 1 and len(attn) == 1, out
    # parameters per instance and in all, and the second is ten times the first
    m = re.search(r"= ([\d,]+) each, ([\d,]+) in all", h3[0])
    assert m and _number(m[2]) == 10 * _number(m[1]), h3[0]
    m = re.search(r"= ([\d,]+) each, ([\d,]+) in all", attn[0])
    assert m and _number(m[2]) == 2 * _number(m[1]), attn[0]
    assert "(identical repeat iterations folded: 10 not listed, --expand lists all)" in out
    assert f"  layers.{H3_SET}.h3_block.h3.y ×10: toeplitz:" in out
    assert f"  layers.{ATTN_SET}.attention_block.attention.y ×2: softmax:" in out
    assert not re.search(r"layers\.\d+\.", out), "a single layer is listed although all are folded"
    assert "mixers: 22" in out                     # the count is of every mixer


def test_check_expand_lists_every_layer():
    out = invoke("check", HYBRID, "--expand")
    tops = re.findall(r"^  (layers\.\d+\.\w+): ", out, flags=re.M)
    assert tops == [f"layers.{i}.{'attention_block' if i in (1, 8) else 'h3_block'}" for i in range(12)]
    assert "×" not in out
    assert len(re.findall(r"^  layers\.\d+\.\w+\.h3\.y: toeplitz", out, flags=re.M)) == 10


def test_check_folds_seeds_and_strides(checked_example):
    out = check_report(checked_example(MODELS / "bigbird.seq"))
    assert "layers.{0..11}.bigbird_layer ×12: block bigbird_layer" in out
    assert "random seeds differ" in out                          # seed = i: one group, said so
    assert re.search(r"bigbird_attention\.y ×12: .*random_blocks\(R, block=Bk, seed=\{0\.\.11\}", out), out
    out = check_report(checked_example(MODELS / "sparse_transformer.seq"))    # one strided, then three local
    assert "  layers.{1..127∖4,8,…,124}.sparse_layer ×96: block sparse_layer" in out
    assert "  layers.{0,4,…,124}.sparse_layer ×32: block sparse_layer" in out
    assert re.search(r"layers\.\{1\.\.127∖4,8,…,124\}\.sparse_layer\.sparse_attention\.y ×96: .*window\(S \+ 1\)", out)
    assert re.search(r"layers\.\{0,4,…,124\}\.sparse_layer\.sparse_attention\.y ×32: .*strided\(S\)", out)


def _expand_set(path: str) -> list[str]:
    """``layers.{0,2,…,6}.x`` -> layers.0.x, layers.2.x, layers.4.x, layers.6.x (the inverse
    of index_set, written here on its own)."""
    m = re.search(r"\{([^}]*)\}", path)
    if m is None:
        return [path]
    if "∖" in m[1]:             # {a..b∖…}: the range a..b without the listed indices
        whole, minus = m[1].split("∖")
        a, b = map(int, whole.split(".."))
        gone = {int(p.split(".")[-1]) for p in _expand_set("{" + minus + "}")}
        return [path[:m.start()] + str(k) + path[m.end():] for k in range(a, b + 1) if k not in gone]
    indices: list[int] = []
    parts = m[1].split(",")
    i = 0
    while i < len(parts):
        part = parts[i]
        if ".." in part:
            a, b = map(int, part.split(".."))
            indices += list(range(a, b + 1))
        elif i + 2 < len(parts) and parts[i + 2] == "…":
            first, second, last = int(part), int(parts[i + 1]), int(parts[i + 3])
            indices += list(range(first, last + 1, second - first))
            i += 3
        else:
            indices.append(int(part))
        i += 1
    return [path[:m.start()] + str(k) + path[m.end():] for k in indices]


def _listed(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The layer instances (path, definition) and mixer paths a check report lists, each
    folded line expanded to the iterations it stands for."""
    layers_part = text.split("\nlayers:", 1)[1].split("\nmixers: ", 1)[0]
    layers = []
    for m in re.finditer(r"^\s+(\S+?)(?: ×(\d+))?: (\w+ \w+)  \[params", layers_part, flags=re.M):
        paths = _expand_set(m[1])
        assert m[2] is None or int(m[2]) == len(paths), m[0]
        layers += [(p, m[3]) for p in paths]
    mixers = []
    for m in re.finditer(r"^  (\S+?)(?: ×(\d+))?: \w+: ", text.split("\nmixers: ", 1)[1], flags=re.M):
        paths = _expand_set(m[1])
        assert m[2] is None or int(m[2]) == len(paths), m[0]
        mixers += paths
    return layers, mixers


def test_expand_set():
    assert _expand_set("layers.{0,1,3..5,7..11}.h3_block") == \
        [f"layers.{i}.h3_block" for i in (0, 1, 3, 4, 5, 7, 8, 9, 10, 11)]
    assert _expand_set("layers.{1,3,…,9}.x") == [f"layers.{i}.x" for i in (1, 3, 5, 7, 9)]
    assert _expand_set("layers.{1,3..5}.x") == [f"layers.{i}.x" for i in (1, 3, 4, 5)]
    assert _expand_set("layers.{0..9∖3,7}.x") == [f"layers.{i}.x" for i in (0, 1, 2, 4, 5, 6, 8, 9)]


def test_check_folding_loses_nothing(example, checked_example):
    """Every example: the folded report stands for exactly the instances and mixers that the
    expanded one lists, each once, and the count of every folded line is its index set's."""
    checked = checked_example(example)
    folded, full = check_report(checked), check_report(checked, expand=True)
    (layers, mixers), (all_layers, all_mixers) = _listed(folded), _listed(full)
    assert len(set(layers)) == len(layers) and len(set(mixers)) == len(mixers), folded
    assert sorted(layers) == sorted(all_layers), folded
    assert sorted(mixers) == sorted(all_mixers), folded
    assert int(re.search(r"^mixers: (\d+)$", full, flags=re.M)[1]) == len(all_mixers)


def test_check_without_repetition_is_unchanged(checked_example):
    checked = checked_example(ROOT / "examples" / "mixers" / "softmax_attention.seq")
    assert check_report(checked) == check_report(checked, expand=True)


# ---- the analysis table ----------------------------------------------------------------


def _columns(line: str) -> list[str]:
    """FLOPs, matmul, params, act. B, HBM B of a table line (the fixed-width columns)."""
    return line[78:122].split()


def test_table_folds_and_sums():
    report = seqdsl.analyze(HYBRID)
    d = report.to_dict()
    text = render(report, formulas=False)
    lines = text.splitlines()
    start = lines.index(f"layers.{H3_SET}.h3_block ×10  (costs of one instance, then the sums for one and "
                        "for all 10)")
    assert f"layers.{ATTN_SET}.attention_block ×2  (costs of one instance, then the sums for one and for all 2)" in lines
    one = next(line for line in lines[start:] if line.startswith("  = one instance"))
    every = next(line for line in lines[start:] if line.startswith("  = all 10"))
    # the sums against the JSON, which keeps every layer
    h3_units = [i for i in range(12) if i not in (1, 8)]
    assert {r["name"] for r in d["layers"] if r["name"].endswith(".h3.y")} == \
        {f"layers.{i}.h3_block.h3.y" for i in h3_units}
    keys = ("flops", "matmul_flops", "param_count", "activation_bytes", "hbm_bytes")
    first = [r for r in d["layers"] if r["name"].startswith("layers.0.")]
    every_row = [r for r in d["layers"] if unit_of(r["name"]) and unit_of(r["name"]).index in h3_units]
    assert _columns(one) == [_fmt(sum(r["values"][k] for r in first)) for k in keys]
    assert _columns(every) == [_fmt(sum(r["values"][k] for r in every_row)) for k in keys]
    assert not re.search(r"^layers\.\d+\.", text, flags=re.M)
    # expanded: every row as before, and the same total
    expanded = render(report, formulas=False, expand=True).splitlines()
    assert sum(1 for line in expanded if re.match(r"layers\.\d+\.h3_block\.h3\.y ", line)) == 10
    assert expanded[-1] == lines[-1] and lines[-1].startswith("total")


def test_table_of_longformer_is_short():
    out = invoke("analyze", "complexity", MODELS / "longformer.seq", "--no-formulas")
    full = invoke("analyze", "complexity", MODELS / "longformer.seq", "--no-formulas", "--expand")
    assert len(full.splitlines()) > 300 and len(out.splitlines()) < 80, (len(full.splitlines()), len(out.splitlines()))
    assert "layers.{0..11}.longformer_layer ×12" in out
    assert "…" not in out                        # no layer name cut off at the front


def test_json_keeps_every_layer():
    folded = json.loads(invoke("analyze", "complexity", HYBRID, "--json"))
    expanded = json.loads(invoke("analyze", "complexity", HYBRID, "--json", "--expand"))
    assert folded == expanded
    assert {r["name"].split(".")[1] for r in folded["layers"] if r["name"].startswith("layers.")} == \
        {str(i) for i in range(12)}


# ---- graph -----------------------------------------------------------------------------


def test_graph_folds_the_hybrid(checked_example):
    g = checked_example(HYBRID).graph
    dot = to_dot(g)
    titles = re.findall(r'subgraph "cluster_\d+" \{\n    graph \[label="([^"]*)"', dot)
    assert titles == [f"layers.{H3_SET}.h3_block ×10: block h3_block",
                      f"layers.{ATTN_SET}.attention_block ×2: block attention_block"], titles
    assert "style=dashed, constraint=false" in dot         # into the next iteration
    assert not re.search(r'label="layers\.\d+\.', dot)
    folded, full = drawing(g), drawing(g, expand=True)
    assert len(full.clusters) == 12 and not full.loops
    assert len(folded.boxes) < len(full.boxes) / 5
    # every edge of the graph is drawn: between boxes, or back into the next iteration
    assert {k for e in folded.edges + folded.loops for k in e[:2]} <= set(folded.boxes)
    expanded = to_dot(g, expand=True)
    assert expanded.count('subgraph "cluster_') == 12 and "layers.11.h3_block" in expanded


def test_graph_says_what_it_folded(tmp_path):
    out = invoke("graph", HYBRID, "-o", tmp_path / "g.dot")
    assert "12 repeat iterations drawn as 2 (identical ones once; --expand draws every one)" in out, out
    out = invoke("graph", HYBRID, "-o", tmp_path / "g.dot", "--expand")
    assert "repeat iterations" not in out and "drawn as one box" not in out, out
    assert (tmp_path / "g.dot").read_text().count('subgraph "cluster_') == 12


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_graph_fits_a_page(example, checked_example, tmp_path):
    """At the default settings every example's picture is at most ~3000 px a side, drawn by
    matplotlib and, where it is installed, by Graphviz."""
    graph = checked_example(example).graph
    renderers = ["matplotlib"] + (["dot"] if shutil.which("dot") else [])
    for renderer in renderers:
        out = tmp_path / f"{renderer}.png"
        note = write_graph(graph, out, renderer=renderer)
        width, height = _png_size(out)
        print(f"{example.stem} ({renderer}): {width}x{height} px; {note}")
        assert height <= PAGE_PX and width <= PAGE_PX, f"{renderer}: {width}x{height} px"


NESTED = """dim B, N = 16, D = 8, L = 4

block ff(x: [B, N, D]) -> [B, N, D] {
  return x + linear(layernorm(x), D)
}

block encoder(x: [B, N, D]) -> [B, N, D] {
  repeat L as i {
    x = ff(x)
  }
  return x
}

model m(x: [B, N, D]) -> [B, N, D] {
  x = encoder(x)
  repeat 3 shared {
    x = ff(x)
  }
  repeat 2 {
    x = x * 2.0
  }
  return x
}
"""


def test_repeats_inside_a_block_and_of_primitives(tmp_path):
    """A repeat inside a block called once, a shared repeat, and a repeat of primitives
    (its iterations are ``layers_1.<i>``): each folds on its own."""
    src = tmp_path / "nested.seq"
    src.write_text(NESTED)
    out = invoke("check", src)
    assert "    encoder.layers.{0..3}.ff ×4: block ff  [params D**2 + 3*D = 88 each, 352 in all]" in out, out
    assert "  layers.{0..2}.ff ×3: block ff" in out
    table = invoke("analyze", "complexity", src, "--no-formulas")
    for header in ("encoder.layers.{0..3}.ff ×4", "layers.{0..2}.ff ×3", "layers_1.{0,1}.mul ×2"):
        assert re.search(rf"^{re.escape(header)}  \(costs of one instance", table, flags=re.M), table
    dot = invoke("graph", src)
    titles = re.findall(r'subgraph "cluster_\d+" \{\n    graph \[label="([^"]*)"', dot)
    assert titles == ["encoder.layers.{0..3}.ff ×4: block ff", "layers.{0..2}.ff ×3: block ff",
                      "layers_1.{0,1} ×2"], titles
