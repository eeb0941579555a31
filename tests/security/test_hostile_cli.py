"""Hostile input through the command line and the code generator (issue 11): file names
that try to run code in the generated module, hostile names and strings in the program,
output paths that cannot be written, sizes that do not fit in memory, and JSON output.

Every case runs in one fresh process under a timeout and a memory cap (conftest.py); none
may run code (a marker file would appear), and each ends in a result or a clean error.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

CASE_SECONDS = 6.0
MODEL = """dim B = 2, N = 16, D = 8
model m(x: [B, N, D]) {
  return linear(relu(x), D)
}
"""
ATTENTION = """dim B = 2, H = 2, N = 64, D = 8
mixer m(q: [B, H, N, D], k: [B, H, N, D], v: [B, H, N, D]) {
  return mix(q, k, v, mask = causal(), norm = softmax)
}
"""
# File names that close the generated module's docstring, a string or a comment and run code.
HOSTILE_NAMES = [
    'a""";__import__("os").system("touch PWNED1");"""b.seq',
    "c'''\n__import__('os').system('touch PWNED2')\n'''d.seq",
    'e\\";open("PWNED3","w");#\r\n.seq',
    "f\n# -*- coding: rot13 -*-\nbcra('PWNED4','j')\n.seq",
]
# Programs whose names and strings are Python syntax, builtins or the module's own imports.
PROGRAMS = {
    "names_builtins": "dim B = 2, N = 16, D = 8\nmodel torch(x: [B, N, D]) {\n  int = relu(x)\n"
                      "  self = int + 1\n  math = self * 2\n  return math\n}\n",
    "names_module": "dim B = 2, N = 16, D = 8\nmodel F(x: [B, N, D]) {\n  nn = linear(x, D)\n  return nn\n}\n",
    "string_quotes": MODEL.replace("model m(", 'require N > 1, "\\"\\"\\"; open(\'PWNED5\', \'w\') #\\n"\nmodel m('),
    "rearrange_quotes": "dim B = 2, N = 16, D = 8\nmodel m(x: [B, N, D]) {\n"
                        "  return rearrange(x, \"b n d -> b n d \\\"\\\"\\\"\")\n}\n",
}


def _compile_and_import(name: str, out: str) -> str:
    return (f"c = seqdsl.compile(Path({name!r}), {out!r}, backend='torch')\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('gen_{out}', c.path)\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "model = getattr(mod, c.class_name)()\n"
            "tuple(model(*model.example_inputs()).shape)")


CASES: dict[str, str] = {   # the first case pays for importing torch and the code generator
    "warm_up": "m = seqdsl.load(Path('model.seq'), backend='torch')\ntuple(m(*m.example_inputs()).shape)",
}
for i, name in enumerate(HOSTILE_NAMES):
    CASES[f"file_name_{i}_compile"] = _compile_and_import(name, f"out{i}")
    CASES[f"file_name_{i}_load"] = (f"m = seqdsl.load(Path({name!r}), backend='torch')\n"
                                    "tuple(m(*m.example_inputs()).shape)")
    CASES[f"file_name_{i}_cli"] = f"cli('compile', {name!r}, '-o', 'cli{i}')"
for key in PROGRAMS:
    CASES[f"program_{key}"] = _compile_and_import(f"{key}.seq", f"out_{key}")
CASES.update({
    "run_too_large": "cli('run', 'wide.seq', '--set', 'N=1000000000', '--repeat', '1')",
    "run_huge_exponent": "cli('run', 'model.seq', '--set', 'N=1e1000000000')",
    "graph_missing_folder": "cli('graph', 'model.seq', '-o', 'nowhere/g.dot')",
    "graph_into_folder": "cli('graph', 'model.seq', '-o', 'a_folder')",
    "graph_read_only": "cli('graph', 'model.seq', '-o', 'read_only/g.dot')",
    "plot_missing_folder": "cli('analyze', 'complexity', 'attention.seq', '--plot', 'nowhere/p.png')",
    "plot_into_folder": "cli('analyze', 'complexity', 'attention.seq', '--plot', 'a_folder')",
    "compile_onto_file": "cli('compile', 'model.seq', '-o', 'model.seq')",
    "compile_new_folders": "cli('compile', 'model.seq', '-o', 'new/deeper')",
    "algorithm_bogus": "cli('analyze', 'complexity', 'attention.seq', '--algorithm', '*=bogus')",
    "compile_algorithm_bogus": "cli('compile', 'attention.seq', '--algorithm', '*=bogus')",
    "json_huge_sizes": "cli('analyze', 'complexity', 'attention.seq', '--json', '--backward', "
                       "'--set', 'N=9007199254740992', '--set', 'B=9007199254740992')",
    "json_non_finite": "import json\nfrom seqdsl.cli import _json_safe\n"
                       "json.dumps(_json_safe({'a': float('inf'), 'b': [float('nan'), 1.5]}), allow_nan=False)",
    "import_passwd_cli": "cli('check', 'imports_passwd.seq')",
    "import_path_flag": "cli('-I', 'lib', 'check', 'uses_lib.seq')",
    "import_path_reset": "cli('check', 'uses_lib.seq')",          # the flag of the last command is gone
    "import_outside_refused": "cli('check', 'sub/uses_parent.seq')",
    "import_outside_allowed": "cli('--allow-any-import', 'check', 'sub/uses_parent.seq')",
})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("hostile_cli")
    for name in HOSTILE_NAMES:
        (work / name).write_text(MODEL)
    for key, text in PROGRAMS.items():
        (work / f"{key}.seq").write_text(text)
    (work / "model.seq").write_text(MODEL)
    (work / "wide.seq").write_text(MODEL.replace("D = 8", "D = 4096"))
    (work / "attention.seq").write_text(ATTENTION)
    (work / "imports_passwd.seq").write_text('import "/etc/passwd"\n' + MODEL)
    (work / "lib").mkdir()
    (work / "lib" / "shared.seq").write_text("dim E = 4\n")
    (work / "uses_lib.seq").write_text('import "shared.seq"\n' + MODEL.replace("D = 8", "D = E"))
    (work / "sub").mkdir()
    (work / "sub" / "uses_parent.seq").write_text('import "../lib/shared.seq"\n' + MODEL.replace("D = 8", "D = E"))
    (work / "a_folder").mkdir()
    (work / "read_only").mkdir(mode=0o500)
    return work


@pytest.fixture(scope="module")
def outcomes(batch, work):
    return batch(CASES, work, slow={"warm_up": 60})


def _cli(o: dict, code: int, words: str = "") -> dict:
    assert o["kind"] == "ok" and o["seconds"] < CASE_SECONDS, o
    r = o["value"]
    assert r["exit_code"] == code and r["exception"] is None, o
    assert "internal error" not in r["stderr"] and "Traceback" not in r["stderr"] + r["stdout"], o
    assert re.search(words, r["stderr"] if code else r["stdout"]), o
    return r


def _shape(o: dict) -> None:
    assert o["kind"] == "ok" and o["seconds"] < CASE_SECONDS, o
    assert o["value"].startswith("(2, 16, 8)") or o["value"] == [2, 16, 8], o


def _strict_json(o: dict) -> None:
    r = _cli(o, 0)

    def refuse(word):
        raise AssertionError(f"{word} is not JSON")

    data = json.loads(r["stdout"], parse_constant=refuse)
    assert data["total"]["values"]["flops"] > 1e30, data["total"]


EXPECT = {f"file_name_{i}_{how}": (_shape if how != "cli" else (lambda o: _cli(o, 0, r"wrote .*\.py")))
          for i in range(len(HOSTILE_NAMES)) for how in ("compile", "load", "cli")}
EXPECT.update({f"program_{key}": _shape for key in PROGRAMS})
EXPECT["program_rearrange_quotes"] = lambda o: (o["kind"], o["line"], o["col"]) == ("SeqError", 3, 10) \
    or pytest.fail(str(o))
EXPECT["warm_up"] = lambda o: o["kind"] == "ok" or pytest.fail(str(o))
EXPECT.update({
    "run_too_large": lambda o: _cli(o, 1, r"inputs and weights alone need .* GiB"),
    "run_huge_exponent": lambda o: _cli(o, 1, r"exponent out of range"),
    "graph_missing_folder": lambda o: _cli(o, 1, r"folder nowhere does not exist"),
    "graph_into_folder": lambda o: _cli(o, 1, r"is a folder"),
    # root may write anywhere: then the graph is written, and that is the correct result
    "graph_read_only": lambda o: _cli(o, 0 if os.geteuid() == 0 else 1, r"wrote" if os.geteuid() == 0
                                      else "not writable"),
    "plot_missing_folder": lambda o: _cli(o, 1, r"folder nowhere does not exist"),
    "plot_into_folder": lambda o: _cli(o, 1, r"is a folder"),
    "compile_onto_file": lambda o: _cli(o, 1, r"not a folder"),
    "compile_new_folders": lambda o: _cli(o, 0, r"wrote new/deeper/"),
    "algorithm_bogus": lambda o: _cli(o, 1, r"attention.seq:3:10: error: .*'bogus'.* admits materialized, sdpa, tiled"),
    "compile_algorithm_bogus": lambda o: _cli(o, 1, r"attention.seq:3:10: error: .*'bogus'"),
    "json_huge_sizes": _strict_json,
    "json_non_finite": lambda o: o["kind"] == "ok" and json.loads(o["value"]) == {"a": "inf", "b": ["nan", 1.5]}
    or pytest.fail(str(o)),
    "import_path_flag": lambda o: _cli(o, 0, r"sizes: E=4"),
    "import_path_reset": lambda o: _cli(o, 1, r"uses_lib.seq:1:1: error: cannot import 'shared.seq': no such file"),
    "import_outside_refused": lambda o: _cli(o, 1, r"no such file in .*\n.*\n.*\n.*hint: .*--allow-any-import"),
    "import_outside_allowed": lambda o: _cli(o, 0, r"sizes: E=4"),
    "import_passwd_cli": lambda o: "root:" not in _cli(o, 1, r"only .seq files")["stderr"] or pytest.fail(str(o)),
})


def test_every_case_has_an_expectation():
    assert set(EXPECT) == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_cli(name, outcomes):
    EXPECT[name](outcomes[name])


def test_no_case_ran_code(outcomes, work):
    """Checked after every case ran: none of the payloads created its marker file."""
    assert outcomes
    made = sorted(p.name for p in work.rglob("PWNED*")) + sorted(p.name for p in Path.cwd().glob("PWNED*"))
    assert not made, made
