"""A longer, freshly drawn search of the checker's fuzzers than the suite runs.

The suite's fuzz tests (tests/frontend/test_fuzz.py, tests/frontend/test_fuzz_grammar.py)
draw a fixed set of examples every run (tests/conftest.py, profile ``suite``), so that CI
passes or fails by the code. This script draws new ones, as many as asked, with the same
generators and the same checks: every text must check or raise a positioned SeqError.

    python scripts/fuzz.py                          # 2000 examples of each fuzzer
    python scripts/fuzz.py token grammar -n 5000    # some of them, more examples

A failure prints the smallest text found and the traceback; add the text as an
``@example`` of the test (or a case of tests/security/test_hostile_inputs.py) with the fix.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "frontend" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fuzzers() -> dict:
    """name -> (strategy, check): the suite's generators and checks, unchanged."""
    mutations, grammar = _module("test_fuzz"), _module("test_fuzz_grammar")
    return {
        "char": (mutations.char_mutations(), mutations.check_only_seq_errors),
        "token": (mutations.token_mutations(), mutations.check_only_seq_errors),
        "grammar": (grammar.programs(), grammar.check_only_seq_errors),
    }


def search(strategy, check, examples: int) -> str | None:
    """None when every drawn text passes ``check``; else the report of the smallest failure."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(text):
        check(text)

    try:
        run()
    except Exception:     # noqa: BLE001 - the report is the product here
        return traceback.format_exc()
    return None


def main(argv: list[str] | None = None) -> int:
    available = fuzzers()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="*", metavar="FUZZER", help=f"some of {', '.join(available)} (default: all)")
    ap.add_argument("-n", "--examples", type=int, default=2000, help="examples per fuzzer")
    args = ap.parse_args(argv)
    unknown = [w for w in args.which if w not in available]
    if unknown:
        ap.error(f"unknown fuzzer {', '.join(unknown)} (choose from {', '.join(available)})")
    failed = 0
    for name in args.which or list(available):
        start = time.perf_counter()
        report = search(*available[name], args.examples)
        took = time.perf_counter() - start
        if report is None:
            print(f"{name}: {args.examples} examples, no failure ({took:.0f} s)")
        else:
            failed += 1
            print(f"{name}: FAILED after {took:.0f} s\n{report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
