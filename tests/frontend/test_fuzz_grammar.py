"""Programs generated from the grammar (grammar/seq.lark), not mutated from examples: every
rule of the grammar has a generator below (a test proves that the generated programs use them
all). Each program is checked (and, when it checks, analysed): the only exception allowed is
SeqError, with a position inside the text, and no program may run past CPU_SECONDS.

The generator leans towards programs that type-check (a tensor argument gets a tensor; shapes
are built from declared dims), so that the checker and the analysis are reached, but every
choice can also go wrong: unknown names, wrong kinds, extreme numbers, deep nesting.
Bounded to a fixed budget (max_examples) so that it runs in CI in about 20 s.
"""

from __future__ import annotations

import random
import re
import signal

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqdsl
from seqdsl.frontend.parser import _lark

CPU_SECONDS = 10
DIMS = ["B", "N", "D", "H", "L"]
NUMBERS = ["0", "1", "2", "3", "4", "8", "16", "0.5", "1e-3", "1.5e2", ".25", "64", "1e300", "1e-300", "0.0",
           "9007199254740993", "123456789012345678901234567890"]
ACTIVATIONS = ["relu", "gelu", "silu", "sigmoid", "tanh", "exp", "softplus", "layernorm", "rmsnorm"]
MASKS = ["causal()", "full()", "window(4)", "local(4)", "global_tokens(2)", "strided(2)", "causal(offset = 1)",
         "decay(0.9)", "key_range(0, 4)"]
MESSAGES = ["too small", 'bad: \\"quoted\\"', "a\\nb", "tab\\there", "x.seq:1:1: error: forged"]
WORDS = ["softmax", "none", "sum", "elu1", "sdpa", "tiled", "materialized", "chunked", "recurrent", "x", "y"]


class Gen:
    """One program: a random walk over the grammar's rules, driven by hypothesis' data."""

    def __init__(self, pick, integer):
        self.pick = pick           # pick(options) -> one of them
        self.integer = integer     # integer(lo, hi) -> lo..hi
        self.dims = list(DIMS)

    def chance(self, p: float) -> bool:
        return self.integer(0, 99) < p * 100

    # ---- expressions: scalars (sizes), tensors, masks ---------------------------------
    def scalar(self, depth: int = 0) -> str:
        if depth > 3 or self.chance(0.35):
            return self.pick(NUMBERS + self.dims + ["true", "false", "pi"])
        kind = self.pick(["binop", "binop", "neg", "pow", "paren", "cond", "compare", "logic", "not", "shape", "list_in"])
        a, b = self.scalar(depth + 1), self.scalar(depth + 1)
        return {
            "binop": f"{a} {self.pick(['+', '-', '*', '/', '//', '%'])} {b}",
            "neg": f"-{a}",
            "pow": f"{a} ** {self.pick(['2', '-0.5', '0.5', b])}",
            "paren": f"({a})",
            "cond": f"(if {a} > {b} then {a} else {b})",
            "compare": f"({a} {self.pick(['==', '!=', '<', '<=', '>', '>='])} {b})",
            "logic": f"({a} {self.pick(['and', 'or'])} {b})",
            "not": f"(not {a})",
            "shape": f"x.shape[{self.pick(['0', '1', '-1', '2'])}]",
            "list_in": f"({a} in [{a}, {b},])",
        }[kind]

    def decl(self, depth: int = 0) -> str:
        """A declaration's value: numbers and dims with + - * / // % ** (what it may hold)."""
        if depth > 2 or self.chance(0.4):
            return self.pick(NUMBERS[:10] + self.dims)
        a, b = self.decl(depth + 1), self.decl(depth + 1)
        if self.chance(0.15):
            return f"({a} ** {self.pick(['2', '0.5', '-1', b])})"
        return f"({a} {self.pick(['+', '-', '*', '/', '//', '%'])} {b})"

    def tensor(self, names: list[str], depth: int = 0) -> str:
        if depth > 3 or self.chance(0.3):
            return self.pick(names)
        t = self.tensor(names, depth + 1)
        kind = self.pick(["act", "act", "linear", "linear", "arith", "arith", "matmul", "index", "attr", "mix",
                          "mix", "rearrange", "concat", "mlp", "softmax", "reduce"] + ["complement"] * self.chance(0.1))
        return {
            "act": f"{self.pick(ACTIVATIONS)}({t})",
            "linear": f"linear({t}, {self.pick(self.dims)}, bias = {self.pick(['true', 'false'])})",
            "arith": f"{t} {self.pick(['+', '-', '*', '/', '**'])} {self.pick([self.scalar(2), t])}",
            "matmul": f"({t}) @ ({t}).T",
            "index": f"({t})[{self.subscripts()}]",
            "attr": f"({t}).{self.pick(['T', 'shape', 'nope'])}",
            "mix": self.mix(t),
            "rearrange": f'rearrange({t}, "b n d -> b d n")',
            "concat": f"concat([{t}, {t}], {self.pick(['0', '-1', '2'])})",
            "mlp": f"mlp({t}, {self.pick(self.dims)}, act = {self.pick(['gelu', 'relu', 'nothing'])})",
            "complement": f"~{t}",
            "softmax": f"softmax({t}, axis = -1)",
            "reduce": f"{self.pick(['mean', 'sum', 'max'])}({t}, axis = {self.pick(['-1', '1'])}, keep = true)",
        }[kind]

    def subscripts(self) -> str:
        parts = [self.pick(["...", ":", "None", "0", "-1", f": {self.scalar(2)}", f"{self.scalar(3)} :",
                            "1:2", ":, 0"]) for _ in range(self.integer(1, 3))]
        return ", ".join(parts)

    def mask(self) -> str:
        m = self.pick(MASKS)
        for _ in range(self.integer(0, 2)):
            m = f"{m} {self.pick(['&', '|'])} {self.pick(MASKS)}"
        return m

    def mix(self, t: str) -> str:
        args = [t, t, t] if self.chance(0.8) else [f"v = {t}"]
        kwargs = [f"mask = {self.mask()}"] if self.chance(0.8) else []
        if self.chance(0.6):
            kwargs.append(f"norm = {self.pick(['softmax', 'none', 'sum', 'bogus'])}")
        if self.chance(0.3):
            kwargs.append(f"score = dot(scale = {self.scalar(2)})")
        if self.chance(0.3):
            kwargs.append(f"feature = {self.pick(['elu1', 'relu', 'exp', 'favor(4)'])}")
        if self.chance(0.2):
            kwargs.append(f"algorithm = {self.pick(WORDS)}")
        return f"mix({', '.join(args + kwargs)})"

    # ---- statements and definitions -----------------------------------------------------
    def statements(self, names: list[str], depth: int) -> list[str]:
        out = []
        for _ in range(self.integer(0, 3)):
            kind = self.pick(["assign"] * 5 + ["repeat", "repeat", "if", "if", "param", "require", "empty"]
                             + ["multi"] * self.chance(0.2))
            if depth > 2 and kind in ("repeat", "if"):
                kind = "assign"
            if kind == "assign":
                name = self.pick(["x", "y", "z", "h", "N", "relu", "int_", "self"])
                out.append(f"{name} = {self.tensor(names)}")
                names = names + [name] if name not in names else names
            elif kind == "multi":
                out.append(f"a, b = {self.tensor(names)}")
            elif kind == "repeat":
                var = f" as i{depth}" if self.chance(0.5) else ""
                shared = " shared" if self.chance(0.3) else ""
                body = self.statements(names, depth + 1)
                out.append(f"repeat {self.pick(['2', '3', 'L', '0', self.scalar(3)])}{var}{shared} {{ "
                           + "; ".join(body) + " }")
            elif kind == "if":
                then = "; ".join(self.statements(names, depth + 1))
                text = f"if {self.scalar(1)} {{ {then} }}"
                if self.chance(0.5):
                    text += " else " + (f"if {self.scalar(2)} {{ }}" if self.chance(0.5)
                                        else "{ " + "; ".join(self.statements(names, depth + 1)) + " }")
                out.append(text)
            elif kind == "param":
                init = f" = {self.pick(['normal(0.02)', 'zeros()', 'ones', 'uniform(-1, 1)', self.scalar(3)])}" \
                    if self.chance(0.5) else ""
                out.append(f"param w{depth}: {self.type_expr()}{init}")
            elif kind == "require":
                out.append(self.require())
            else:
                out.append(";")
        return out

    def type_expr(self) -> str:
        dtype = self.pick(["", "", "", "int", "float", "bool"])
        dims = [self.pick(self.dims + ["2", "D * 2", "N // 2"]) for _ in range(self.integer(0, 3))]
        return f"{dtype}[{', '.join(dims)}]"

    def require(self) -> str:
        msg = ', "' + self.pick(MESSAGES) + '"' if self.chance(0.5) else ""
        return f"require {self.scalar(1)}{msg}"

    def definition(self, name: str) -> str:
        kind = self.pick(["mixer", "block", "model"])
        params = ["x: [B, N, D]"]
        if self.chance(0.3):
            params.append(f"y: {self.type_expr()}")
        if self.chance(0.4):
            params.append(f"k = {self.scalar(2)}")
        ret = f" -> {self.type_expr()}" + (f", {self.type_expr()}" if self.chance(0.2) else "") \
            if self.chance(0.3) else ""
        body = self.statements(["x"], 0)
        values = [self.tensor(["x"], 1)] + ([self.tensor(["x"], 2)] if self.chance(0.1) else [])
        body.append("return " + ", ".join(values))
        return f"{kind} {name}({', '.join(params)}{',' if self.chance(0.1) else ''}){ret} {{\n  " \
            + "\n  ".join(body) + "\n}\n"

    def program(self) -> str:
        sizes = {d: self.pick(["2", "4", "8", "16", "64", "1"]) for d in DIMS}
        items = ["dim " + ", ".join(f"{d} = {v}" if self.chance(0.85) else d for d, v in sizes.items())]
        if self.chance(0.3):
            items.append(f"dim E = {self.decl()}")
            self.dims.append("E")
        if self.chance(0.3):
            items.append(f"option o = {self.pick([self.decl(), self.pick(NUMBERS)])}, p = {self.pick(NUMBERS)}")
        if self.chance(0.2):
            items.append(self.require())
        if self.chance(0.05):
            items.append(f'import "{self.pick(["lib.seq", "/etc/passwd", "../x.seq"])}"')
        if self.chance(0.1):
            items.append(";")
        names = [f"f{i}" for i in range(self.integer(1, 3))]
        for name in names[1:]:
            items.append(self.definition(name))
        main = self.definition(names[0])
        if len(names) > 1 or self.chance(0.1):      # f0(x) calling itself: an error, sometimes
            main = main.replace("(x)", f"({self.pick(names[1:] or names)}(x))", 1)
        items.append(main)
        return "\n".join(items) + "\n"


@st.composite
def programs(draw) -> str:
    return Gen(lambda options: draw(st.sampled_from(options)), lambda lo, hi: draw(st.integers(lo, hi))).program()


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def check_only_seq_errors(text: str) -> None:
    old = signal.signal(signal.SIGPROF, _on_alarm)
    signal.setitimer(signal.ITIMER_PROF, CPU_SECONDS)
    try:
        checked = seqdsl.check(text)
        seqdsl.analyze(checked.program, checked.entry)
    except seqdsl.SeqError as err:
        rendered = err.render()
        assert re.match(r"^(<string>(:\d+:\d+)?: )?error: \S", rendered.splitlines()[0]), rendered
        if err.file == "<string>" and err.line >= 1:
            lines = text.split("\n")
            assert err.line <= len(lines), rendered
            assert err.column <= len(lines[err.line - 1]) + 1, rendered
    except _Hang:
        pytest.fail(f"no result after {CPU_SECONDS} s of CPU time:\n{text}")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_generated_programs_raise_only_seq_errors(text):
    check_only_seq_errors(text)


def _tree_rules(tree: lark.Tree) -> set[str]:
    return {str(t.data) for t in tree.iter_subtrees()}


def test_the_generator_reaches_every_rule_of_the_grammar():
    """The generator is the grammar's: over a fixed sample, every named rule of seq.lark
    appears in some generated program's parse tree (a new rule needs a generator)."""
    named = {str(r.alias or r.origin.name) for r in _lark().rules
             if not str(r.origin.name).startswith("_") and (r.alias or not r.options.expand1)}
    seen: set[str] = set()
    parsed = 0
    rng = random.Random(11)
    for _ in range(200):
        text = Gen(rng.choice, rng.randint).program()
        try:
            seen |= _tree_rules(_lark().parse(text))
            parsed += 1
        except lark.exceptions.UnexpectedInput:
            pass
    assert parsed >= 190, "the generator should write programs that parse"
    assert named - seen == set(), f"rules the generator never produces: {sorted(named - seen)}"
