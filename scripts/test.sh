#!/usr/bin/env bash
# Run the test suite (in .venv when there is one). Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/test_cli.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
# The suite runs on every core (pytest-xdist, at most 4 workers; each worker gives torch its
# share of the cores, see tests/conftest.py). SEQDSL_TEST_WORKERS=0 runs it in one process.
WORKERS="${SEQDSL_TEST_WORKERS:-$(python -c 'import os; print(min(4, os.cpu_count() or 1))')}"
if [ "$WORKERS" -gt 1 ]; then
  exec python -m pytest -q -n "$WORKERS" "$@"
fi
exec python -m pytest -q "$@"
