#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and the test tools (pytest, onnx,
# onnxruntime), then run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/run_tests.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV="${ATSS_VENV:-.venv}"
"$VENV/bin/python" -c "import pytest" >/dev/null 2>&1 || "$VENV/bin/python" -m pip install -q "pytest>=7"
# The optional export extra (.[export]), so that the ONNX export tests run too;
# installed directly, which does not rebuild the kernels as `pip install -e .[export]` would.
"$VENV/bin/python" -c "import onnx, onnxruntime" >/dev/null 2>&1 \
    || "$VENV/bin/python" -m pip install -q "onnx>=1.14" "onnxruntime>=1.16"
exec "$VENV/bin/python" -m pytest -q "$@"
