#!/usr/bin/env bash
# Set up .venv with the test extras and run every test that needs no GPU, one pytest worker per core
# (pytest-xdist; a file's tests stay on one worker, so its module fixtures are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test
exec .venv/bin/python -m pytest -m "not gpu" -q -n "${RFA_TEST_WORKERS:-auto}" --dist loadfile "$@"
