#!/usr/bin/env bash
# Set up .venv with the test extras and run every test that needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test
exec .venv/bin/python -m pytest -m "not gpu" -q "$@"
