"""Every grammar rule has exactly one handler in the tree -> AST transformer, and every
handler belongs to a rule: a new rule without a handler (or a dead handler) fails here."""

from __future__ import annotations

from pathlib import Path

from seqdsl.frontend.parser import _lark, _ToAst, grammar_rules

ROOT = Path(__file__).resolve().parents[2]

EVERY_CONSTRUCT = '''
import "other.seq"
dim B, N = 8, D = 4 * 2
option W = 2; option causal = 1
require N % W == 0, "msg"
mixer m(x: [B, N, D], t: int[B, N], k = 3) -> [B, N, D], [B, N, D] {
  param E: [D, D] = normal(0.02)
  y = if causal then x else -x
  z = x[:, 1:, ..., None] @ E
  a, b = f(x, k = 2)
  repeat 2 as i shared { y = y + 1 }
  if not (i in [1, 2]) and true or false { y = y } else if k != 2 { y = y } else { y = y }
  require D > 1
  w = ~y | y & y ** -2 // 3 % 2 - 1 < 2
  u = [1, 2.5, "s"].shape
  ;
  return y, z
}
'''


def _seen_rules() -> set[str]:
    seen = set()
    texts = [EVERY_CONSTRUCT] + [p.read_text() for p in (ROOT / "examples").glob("*/*.seq")]
    for text in texts:
        for tree in _lark().parse(text).iter_subtrees():
            seen.add(str(tree.data))
    return seen


def _reaching_rules() -> set[str]:
    """The tree node names the transformer can receive, computed from the grammar: an alias;
    else the rule's name, unless lark inlines it (a ``_rule``, or a ``?rule`` expansion that
    keeps one child)."""
    names = set()
    for rule in _lark().rules:
        if rule.alias is not None:
            names.add(str(rule.alias))
            continue
        kept = [sym for sym in rule.expansion if not getattr(sym, "filter_out", False)]
        if rule.origin.name.startswith("_") or (rule.options.expand1 and len(kept) == 1):
            continue
        names.add(str(rule.origin.name))
    return names


def _handlers() -> set[str]:
    return {name for name in vars(_ToAst) if not name.startswith("_")}


def test_every_rule_that_reaches_the_transformer_has_a_handler():
    missing = (_reaching_rules() | _seen_rules()) - _handlers()
    assert not missing, f"grammar rules without a handler: {sorted(missing)}"


def test_every_handler_is_a_rule():
    dead = _handlers() - _reaching_rules()
    assert not dead, f"handlers for no grammar rule (or for a rule that is always inlined): {sorted(dead)}"


def test_the_corpus_reaches_every_rule():
    """The corpus exercises every rule, which also checks _reaching_rules against lark."""
    seen = _seen_rules()
    assert seen <= _reaching_rules(), f"lark built nodes the computation misses: {sorted(seen - _reaching_rules())}"
    unreached = _reaching_rules() - seen
    assert not unreached, f"no test input uses: {sorted(unreached)}"


def test_grammar_rules_lists_rules_and_aliases():
    assert {"start", "definition", "binop", "cond_expr", "tensor_param", "else_if"} <= grammar_rules()
    assert _reaching_rules() <= grammar_rules()
