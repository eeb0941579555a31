#!/usr/bin/env bash
# Set up seqdsl in a virtual environment (.venv) and check an example model.
#
#   bash scripts/setup.sh                      # install, then: seqdsl check examples/models/h3_hybrid.seq
#   SEQDSL_SETUP_ONLY=1 bash scripts/setup.sh  # install only
#
# torch is pinned: an unpinned `pip install torch` would pull a multi-GB CUDA build onto
# CPU machines. Reuses an existing .venv; PYTHON picks the interpreter (3.10 or newer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup: seqdsl needs Python >= 3.10 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }
  echo "setup: creating .venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

echo "setup: installing torch==$TORCH_VERSION"
"$PY" -m pip install --disable-pip-version-check --quiet "torch==$TORCH_VERSION"
echo "setup: installing seqdsl (editable) with the test tools"
"$PY" -m pip install --disable-pip-version-check --quiet -e ".[test]"
"$PY" -m seqdsl.cli --version

if [ "${SEQDSL_SETUP_ONLY:-0}" = "1" ]; then
  echo "setup: done (SEQDSL_SETUP_ONLY=1: the example is not checked)"
  exit 0
fi
echo "setup: seqdsl check examples/models/h3_hybrid.seq"
.venv/bin/seqdsl check examples/models/h3_hybrid.seq
