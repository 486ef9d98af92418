#!/usr/bin/env bash
# Quick start: from a fresh clone to a trained, evaluated and visualised ATSS
# detector on the built-in synthetic dataset, with no data to download.
#
#     bash quickstart.sh              # about 9 minutes the first time on a 2-core CPU (3 of
#                                     # them set-up), 6 on later runs; a few on a GPU
#     bash quickstart.sh --fresh      # options go to tools/quick_start.py (--help lists them)
#
# 1. scripts/setup_env.sh sets up the virtual environment .venv ($ATSS_VENV):
#    it reuses the PyTorch of $PYTHON (default python3) when there is one,
#    otherwise installs it (the CPU-only build on a machine without an NVIDIA
#    GPU, never the several-GB CUDA build; $ATSS_TORCH overrides the
#    requirement), installs requirements.txt and builds the compiled kernels
#    (`pip install --no-build-isolation -e .`), continuing with the
#    pure-PyTorch implementations if they do not build;
# 2. tools/quick_start.py generates the dataset, trains, evaluates, draws the
#    detections and plots the losses; see docs/QUICK_START.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
echo "== Setting up the environment (scripts/setup_env.sh)"
bash scripts/setup_env.sh
setup_seconds=$(( $(date +%s) - start ))
echo "== Set-up took $setup_seconds s"
exec "${ATSS_VENV:-.venv}/bin/python" tools/quick_start.py --setup-seconds "$setup_seconds" "$@"
