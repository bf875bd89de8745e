#!/usr/bin/env bash
# Everything that needs a GPU: build the native code, run the kernel tests (also under compute-sanitizer
# memcheck and racecheck, on small cases), the TensorRT plugin harness, and the pytest GPU tests.
# Logs go to ${OUT:-gpu-logs}/. Exit status: non-zero if any part failed. RFA_GPU_PYTEST=0 leaves out the last
# step (when scripts/gpu-install-test.sh runs the same tests against an installed package).
# RFA_GPU_PARTS picks parts, in this order (default all; over 14 minutes on an H100, so a machine with a
# per-command limit takes it in several calls): build kernel-tests sanitize-kernels sanitize-python plugin pytest.
# Without build, the parts run what build/ already holds. RFA_GPU_SANITIZE_TARGETS picks the test files of
# sanitize-python (default all six below; run side by side, so a limited call takes a few at a time).
# RFA_TEST_SHARD=i/n (tests/conftest.py) runs every n-th test from the i-th in each pytest run, so a target too
# long for one call (racecheck of scan_kernels) is done in n calls, i = 0 .. n-1.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
status=0
parts=" ${RFA_GPU_PARTS:-build kernel-tests sanitize-kernels sanitize-python plugin pytest} "
for part in $parts; do
  case $part in build | kernel-tests | sanitize-kernels | sanitize-python | plugin | pytest) ;;
    *) echo "RFA_GPU_PARTS: unknown part '$part'" >&2; exit 2 ;;
  esac
done
targets=${RFA_GPU_SANITIZE_TARGETS:-scan_kernels decode_attention add_layer_norm decode_linear cross_read lm_decode_step}
for target in $targets; do
  [ -f "tests/gpu/test_$target.py" ] || { echo "RFA_GPU_SANITIZE_TARGETS: no tests/gpu/test_$target.py" >&2; exit 2; }
done
want() { [[ $parts == *" $1 "* ]]; }
step() { echo "== $1"; }
if want build; then
  step build
  cmake -S . -B build -G Ninja ${TensorRT_ROOT:+-DTensorRT_ROOT=$TensorRT_ROOT} >"$out/cmake.log" 2>&1 &&
    cmake --build build -j >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
  grep -E "TensorRT headers" "$out/cmake.log"
fi
if want kernel-tests; then
  step "kernel tests"
  ./build/rfa_kernel_tests >"$out/kernel_tests.log" 2>&1 || status=1
  grep -E "^FAIL|failures" "$out/kernel_tests.log"
fi
if ! command -v compute-sanitizer >/dev/null; then
  { want sanitize-kernels || want sanitize-python; } && echo "compute-sanitizer not installed: sanitizer runs skipped"
elif want sanitize-kernels; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    compute-sanitizer --tool $tool --error-exitcode 9 ./build/rfa_kernel_tests --quick >"$out/sanitizer_$tool.log" 2>&1 || status=1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|failures" "$out/sanitizer_$tool.log"
  done
fi
if command -v compute-sanitizer >/dev/null && want sanitize-python; then
  # kernels driven from Python (the fused decode step, the residual add + layer norm, the decode linear
  # layers and the one with the residual norm before it, the cross-attention read, the one-kernel batch-1
  # model step, the reduced-state step kernels): a bf16 subset of their tests, and the programmatic
  # dependent launches. Left out as the slowest: the scan's 4097-step runs on fp32 inputs (the general chunked
  # kernel, which the shorter cases take too; the bf16 ones stay, for the Hopper prefill's split over the
  # sequence) and its hundreds of one-step launches (path1: the step kernel of the T = 1 cases). The runs go side
  # by side (each is mostly host time under the sanitizer); each log ends with its exit status.
  filter="((kernel_matches and bf16 and not 32000) or overlapped or dependent_launch or (projection and bf16) or prefetch or bf16_state or int8_state or (argmax and bf16) or (residual_norm_linear and bf16) or one_row_early or trigger or start_early) and not (T4097 and fp32) and not (path1 and (T257 or T130 or T100))"
  for target in $targets; do
    for tool in memcheck racecheck; do
      log="$out/sanitizer_${target}_$tool.log"
      ( PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} compute-sanitizer --tool $tool --error-exitcode 9 \
          python3 -m pytest -q -m gpu tests/gpu/test_$target.py -k "$filter" -p no:cacheprovider >"$log" 2>&1
        echo "exit status $?" >>"$log" ) &
    done
  done
  wait
  for target in $targets; do
    for tool in memcheck racecheck; do
      log="$out/sanitizer_${target}_$tool.log"
      step "compute-sanitizer $tool, $target"
      [ "$(tail -n 1 "$log")" = "exit status 0" ] || status=1
      grep -qE "[0-9]+ passed" "$log" || { echo "no test ran under $tool"; status=1; }
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$log" | tail -3
    done
  done
fi
if want plugin && [ -x build/rfa_trt_plugin_tests ]; then
  step "TensorRT plugin harness"
  ./build/rfa_trt_plugin_tests build/librfa_trt_plugin.so >"$out/trt_plugin.log" 2>&1 || status=1
  grep -E "FAIL|failures" "$out/trt_plugin.log"
fi
if want pytest && [ "${RFA_GPU_PYTEST:-1}" != 0 ]; then
  step "pytest -m gpu"
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider >"$out/pytest_gpu.log" 2>&1 || status=1
  tail -5 "$out/pytest_gpu.log"
  grep -E "^(FAILED|ERROR)" "$out/pytest_gpu.log" | head -20
fi
exit $status
