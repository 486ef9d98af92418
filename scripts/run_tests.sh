#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh), then run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/run_tests.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${ATSS_VENV:-.venv}"
"$VENV/bin/python" -c "import pytest" >/dev/null 2>&1 || "$VENV/bin/python" -m pip install -q "pytest>=7"
exec "$VENV/bin/python" -m pytest -q "$@"
