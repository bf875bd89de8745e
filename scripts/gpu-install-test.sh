#!/usr/bin/env bash
# On a GPU machine: `pip install .` (not editable) from a clean copy of the tree (no build/) into a fresh
# venv, then check that the installed package finds its kernels and run the GPU tests against it, from a
# folder that is not the source tree. The venv sees the machine's packages (torch, triton, onnx, ...) through
# a path entry after its own site-packages (python3 may itself be a venv, whose packages
# --system-site-packages would not show). pip builds without isolation, so scikit-build-core must be
# importable (WHEELS=dir: install the wheels in dir into the venv first, for machines without network).
# Logs go to ${OUT:-gpu-logs}/install_*.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-gpu-logs}")
mkdir -p "$out"
base_py=${PYTHON:-python3}  # the machine's Python with torch
work=$(mktemp -d)
mkdir -p "$work/src" "$work/run"
tar --exclude=./build --exclude=./.venv --exclude=./.deps --exclude=./.xfer --exclude=./.whl --exclude=./gpu-logs \
    --exclude=./.git -cf - . | tar -xf - -C "$work/src"
"$base_py" -m venv --without-pip "$work/venv"
py=$work/venv/bin/python
machine_site=$("$base_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
venv_site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$machine_site" >"$venv_site/zz_machine_packages.pth"
pip_in_venv() { "$base_py" -m pip --python "$py" install -q --no-index --no-deps "$@"; }
if [ -n "${WHEELS:-}" ]; then
  pip_in_venv "$WHEELS"/*.whl || exit 1
fi
echo "== pip install (non-editable, clean copy)"
start=$(date +%s)
pip_in_venv --no-build-isolation "$work/src" >"$out/install_pip.log" 2>&1 || { tail -30 "$out/install_pip.log"; exit 1; }
echo "built and installed in $(( $(date +%s) - start )) s"
cp -r "$work/src/tests" "$work/src/examples" "$work/src/pyproject.toml" "$work/run/"
cd "$work/run"
"$py" - <<'PY' | tee "$out/install_check.log"
import rfa_export, sys
from rfa_export.ops.causal_gated_scan import kernels_available
from rfa_export.ops.native import build_info, library_path
print("package:", rfa_export.__file__)
print("kernels:", library_path(), build_info())
assert "site-packages" in rfa_export.__file__ and "/src/" not in rfa_export.__file__, "not the installed package"
assert kernels_available() and "site-packages" in str(library_path()), "the installed package has no kernels"
PY
status=${PIPESTATUS[0]}
"$work/venv/bin/rfa-export" doctor | tee -a "$out/install_check.log"
echo "== pytest -m gpu against the installed package"
"$py" -m pytest -q -m gpu tests/gpu -p no:cacheprovider >"$out/install_pytest_gpu.log" 2>&1 || status=1
tail -5 "$out/install_pytest_gpu.log"
grep -E "^(FAILED|ERROR)" "$out/install_pytest_gpu.log" | head -20
exit $status
