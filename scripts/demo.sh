#!/usr/bin/env bash
# Set up .venv and run the main job on the bundled model (examples/tiny_rfa.pt).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python examples/quickstart.py "$@"
