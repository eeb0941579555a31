#!/usr/bin/env bash
# Run the test suite (in .venv when there is one). Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/test_cli.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
exec python -m pytest -q "$@"
