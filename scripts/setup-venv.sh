#!/usr/bin/env bash
# Create .venv (if missing) and install rfa-export into it, editable, with the extras named in $1.
# torch is installed first, pinned by RFA_TORCH (default torch==2.13.0, the CPU wheel kept on this kind of
# machine): asking pip for a bare "torch>=2.11" on a fresh machine would fetch a multi-GB CUDA build.
# The editable install compiles no CUDA (RFA_CUDA=OFF, for a fast setup): the kernels of a source checkout
# come from `cmake -S . -B build && cmake --build build`; `pip install .` (not editable) builds them into
# the package (docs/install.md).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
python3 -m venv .venv >/dev/null 2>&1 || python3 -m venv .venv
py=.venv/bin/python
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "${RFA_TORCH:-torch==2.13.0}"
fi
RFA_CUDA=${RFA_CUDA:-OFF} "$py" -m pip install -q -e ".${extras:+[$extras]}"
