#!/usr/bin/env bash
# Set up a virtual environment with atss, its dependencies and its compiled
# kernels. Idempotent: a second run only checks that everything is there.
#
#   ATSS_VENV      where the environment goes (default: .venv in the repository)
#   PYTHON         interpreter to create it with (default: python3)
#   ATSS_TORCH     pip requirement for torch when it must be installed
#                  (default: the CPU build on a machine without an NVIDIA GPU,
#                  the default CUDA build otherwise)
#
# PyTorch already importable by $PYTHON is reused (the environment sees the
# system site-packages), so no second copy is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ATSS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        echo "[setup] reusing the PyTorch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec="${ATSS_TORCH:-torch>=2.4}"
        echo "[setup] installing $spec (NVIDIA GPU found)"
        "$PY" -m pip install "$spec"
    else
        # No GPU: the CPU build only, never the several-GB CUDA packages.
        spec="${ATSS_TORCH:-torch==2.13.0+cpu}"
        echo "[setup] installing $spec (no NVIDIA GPU found: CPU build)"
        # A local wheel or a mirror may hold it; else PyTorch's CPU index does.
        "$PY" -m pip install "$spec" 2>/dev/null \
            || "$PY" -m pip install "$spec" --extra-index-url "$CPU_TORCH_INDEX"
    fi
fi

"$PY" -m pip install -q -r requirements.txt
if ! "$PY" -c "import atss_core._C" >/dev/null 2>&1 || [ "${ATSS_REBUILD:-0}" = "1" ]; then
    echo "[setup] building the compiled kernels (atss_core._C)"
    if ! "$PY" -m pip install -q --no-build-isolation --no-deps -e .; then
        echo "[setup] NOTICE: the compiled kernels did not build (see the compiler output above);"
        echo "[setup]         atss runs with its pure-PyTorch implementations instead (same results, slower)."
        ATSS_NO_EXT=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
    fi
fi
"$PY" -c "import torch, atss_core; from atss_core.layers import _ext; print('[setup] ready: torch', torch.__version__, '| compiled kernels:', 'yes' if _ext.is_loaded() else 'no (pure-PyTorch fallbacks)')"
