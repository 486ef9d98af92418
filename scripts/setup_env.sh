#!/usr/bin/env bash
# Set up a virtual environment with atss, its dependencies and its compiled
# kernels. Idempotent: a second run only checks that everything is there and
# takes a few seconds; it reinstalls the requirements only when
# requirements.txt changed, and rebuilds the kernels only when their sources,
# setup.py or the PyTorch version changed (or ATSS_REBUILD=1).
#
#   ATSS_VENV      where the environment goes (default: .venv in the repository)
#   PYTHON         interpreter to create it with (default: python3)
#   ATSS_TORCH     pip requirement for torch when it must be installed
#                  (default: the CPU build on a machine without an NVIDIA GPU,
#                  the default CUDA build otherwise)
#   MAX_JOBS       parallel compiler jobs for the kernels (default: all cores)
#   ATSS_REBUILD=1 rebuild the kernels even when they are up to date
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
        echo "[setup] creating the virtual environment $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"

# One interpreter start tells the PyTorch version and whether the kernels import.
probe() {
    "$PY" - 2>/dev/null <<'EOF' || true
import torch
try:
    import atss_core._C  # noqa: F401  (needs torch imported first: libc10.so)
    ext = "ext-ok"
except ImportError:
    ext = "ext-missing"
print(torch.__version__, ext)
EOF
}
read -r torch_version ext_state <<<"$(probe)" || true
if [ -z "$torch_version" ]; then
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
    read -r torch_version ext_state <<<"$(probe)" || true
fi
if [ -z "$torch_version" ]; then
    echo "[setup] ERROR: PyTorch does not import in $VENV; remove $VENV and run again, or see INSTALL.md" >&2
    exit 1
fi

# What each step was last done for; a step whose key is unchanged is skipped.
STAMPS="$VENV/.atss-setup"
mkdir -p "$STAMPS"
fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }

req_key="$(fingerprint requirements.txt)"
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$req_key" ]; then
    echo "[setup] installing requirements.txt"
    "$PY" -m pip install -q -r requirements.txt
    echo "$req_key" > "$STAMPS/requirements"
fi

# The kernels' key: their sources, setup.py, the PyTorch version and whether
# the last build fell back to pure PyTorch (a fallback is retried only when
# something changed: ATSS_REBUILD=1 forces it).
ext_key="$(fingerprint setup.py $(find atss_core/csrc -type f | LC_ALL=C sort)) torch-$torch_version"
if [ "${ATSS_REBUILD:-0}" = "1" ] || [ "$(cat "$STAMPS/kernels" 2>/dev/null)" != "$ext_key" ] \
        || { [ "$ext_state" != "ext-ok" ] && [ ! -e "$STAMPS/kernels-fallback" ]; }; then
    jobs="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"
    log="$VENV/atss-build.log"
    rm -f "$STAMPS/kernels" "$STAMPS/kernels-fallback"
    echo "[setup] building the compiled kernels (atss_core._C) with $jobs parallel jobs;"
    echo "[setup]   this takes 1.5 to 10 minutes on 2 CPU cores, depending on their load (once: later set-ups reuse it)."
    echo "[setup]   Compiler output: $log"
    start=$(date +%s)
    MAX_JOBS="$jobs" "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$log" 2>&1 &
    pid=$!
    # A heartbeat every 20 s with ninja's progress ([done/total] compile steps).
    while kill -0 "$pid" 2>/dev/null; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            sleep 2
            kill -0 "$pid" 2>/dev/null || break
        done
        kill -0 "$pid" 2>/dev/null || break
        steps=$(grep -oE '^ *\[[0-9]+/[0-9]+\]' "$log" | tail -n 1 | tr -d ' ' || true)
        echo "[setup]   ... $(( $(date +%s) - start )) s, compile steps finished: ${steps:-none yet}"
    done
    if wait "$pid"; then
        echo "[setup] kernels built in $(( $(date +%s) - start )) s"
        echo "$ext_key" > "$STAMPS/kernels"
    else
        tail -n 40 "$log" | sed 's/^/[build] /'
        echo "[setup] NOTICE: the compiled kernels did not build (the end of $log is above);"
        echo "[setup]         atss runs with its pure-PyTorch implementations instead (same results, slower)."
        echo "[setup]         After fixing the cause, rebuild with ATSS_REBUILD=1 bash scripts/setup_env.sh"
        ATSS_NO_EXT=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
        echo "$ext_key" > "$STAMPS/kernels"
        touch "$STAMPS/kernels-fallback"
    fi
fi
"$PY" -c "import torch, atss_core; from atss_core.layers import _ext; print('[setup] ready: torch', torch.__version__, '| compiled kernels:', 'yes' if _ext.is_loaded() else 'no (pure-PyTorch fallbacks)')"
