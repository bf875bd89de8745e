"""CI compiles what it can: the CUDA kernels (and, where TensorRT headers are found, the plugin libraries).

One developer build, for sm_90 (portable PTX, so without the Hopper wgmma prefill): every CUDA source and target
compiles there as in the default sm_90a build, whose own compile is the CUDA wheel's (test_packaging.py). The
default configuration is checked here at configure time."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import workspace_bounds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    skip_without_cmake_and_nvcc()
    out = tmp_path_factory.mktemp("native")
    log = configure(out, "-DCMAKE_CUDA_ARCHITECTURES=90")
    built = subprocess.run(["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2)], capture_output=True,
                           text=True, env=cuda_env())
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
    return out, log


def skip_without_cmake_and_nvcc():
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc (CUDA toolkit) not installed")


def cuda_env():
    return dict(os.environ, PATH=os.environ["PATH"] + ":/usr/local/cuda/bin")


def configure(out: Path, *cmake_args) -> str:
    configured = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(out), *cmake_args], capture_output=True,
                                text=True, env=cuda_env())
    assert configured.returncode == 0, configured.stdout[-3000:] + configured.stderr[-3000:]
    return configured.stdout


def exported_symbols(lib: Path, undefined=False):
    flag = "--undefined-only" if undefined else "--defined-only"
    return subprocess.run(["nm", "-D", flag, str(lib)], capture_output=True, text=True, check=True).stdout


def test_kernels_build_with_the_c_abi(build):
    out, _ = build
    lib = out / "librfa_kernels.so"
    assert lib.is_file() and (out / "rfa_kernel_tests").is_file()
    symbols = exported_symbols(lib)
    for name in ("rfa_causal_gated_scan", "rfa_causal_gated_scan_path", "rfa_scan_check", "rfa_scan_workspace_size",
                 "rfa_scan_state_workspace_size", "rfa_scan_workspace_bound", "rfa_status_string"):
        assert f" T {name}\n" in symbols


def test_plugin_libraries_or_a_plain_skip_message(build):
    out, log = build
    if "TensorRT headers not found" in log:
        assert "skipped: rfa_trt_plugin, rfa_trt_plugin_autoreg, rfa_trt_plugin_tests" in log
        assert not (out / "librfa_trt_plugin.so").exists()
        pytest.skip("TensorRT headers not found (fetch NVIDIA/TensorRT include/ into .deps/tensorrt): plugin not built")
    plugin, autoreg = out / "librfa_trt_plugin.so", out / "librfa_trt_plugin_autoreg.so"
    defined = exported_symbols(plugin)
    assert " T getCreators\n" in defined and " T setLoggerFinder\n" in defined
    assert "nvinfer" not in subprocess.run(["ldd", str(plugin)], capture_output=True, text=True).stdout
    assert "getPluginRegistry" in exported_symbols(autoreg, undefined=True)  # resolved from libnvinfer at load
    assert (out / "rfa_trt_plugin_tests").is_file()


def test_an_int8_state_prefill_asks_for_its_fp32_copy(build):
    """rfa_scan_state_workspace_size (a pure function: no GPU needed): an int8-row state's fp32 copy,
    [B, H, F, Dv + 1] float32 rounded up to 256 bytes; nothing for fp32 (0) and bf16 (2) states."""
    import ctypes

    out, _ = build
    size = ctypes.CDLL(str(out / "librfa_kernels.so")).rfa_scan_state_workspace_size
    size.argtypes, size.restype = [ctypes.c_int] * 5, ctypes.c_size_t
    int8 = 3
    assert size(2, 3, 64, 48, int8) == 2 * 3 * 64 * 49 * 4  # already a multiple of 256
    assert size(1, 1, 16, 16, int8) == 1280  # 1,088 bytes, rounded up
    assert size(64, 16, 128, 64, int8) == 64 * 16 * 128 * 65 * 4
    assert size(2, 3, 64, 48, 0) == size(2, 3, 64, 48, 2) == 0


def test_the_fused_decode_step_takes_every_state_format(build):
    """rfa_decode_attention_step_check (no GPU needed at T = 1): fp32, bf16 and int8-row states are taken, fp16
    (not a state format) is refused with RFA_ERR_DTYPE."""
    import ctypes

    from rfa_export.ops.decode_attention.cuda import _DecodeArgs
    from rfa_export.ops.native import STATE_DTYPE_CODES

    out, _ = build
    lib = ctypes.CDLL(str(out / "librfa_kernels.so"))
    lib.rfa_decode_attention_step_check.argtypes = [ctypes.POINTER(_DecodeArgs)]
    lib.rfa_status_string.restype = ctypes.c_char_p
    address = 1 << 20  # never dereferenced by the check; 16-byte aligned
    statuses = {}
    for state_dtype in sorted(STATE_DTYPE_CODES.values()) + [1]:
        args = _DecodeArgs(B=4, H=2, dh=64, D=64, kind=0, dtype=2, eps=1e-6, row_stride=3 * 2 * 64, q=address,
                           k=address, v=address, sigma=address, w_tilde=address, state=address, out=address,
                           state_dtype=state_dtype)
        statuses[state_dtype] = lib.rfa_decode_attention_step_check(ctypes.byref(args))
    assert statuses[0] == statuses[2] == statuses[3] == 0
    assert b"dtype" in lib.rfa_status_string(statuses[1]).lower()


def cuda_flags(out: Path) -> str:
    return (out / "CMakeFiles" / "rfa_kernels_obj.dir" / "flags.make").read_text()


def test_the_default_configuration_is_sm_90a_with_the_hopper_prefill(tmp_path):
    skip_without_cmake_and_nvcc()
    configure(tmp_path)  # no CMAKE_CUDA_ARCHITECTURES: the developer default; its library is built by the wheel test
    flags = cuda_flags(tmp_path)
    assert "arch=compute_90a,code=[compute_90a,sm_90a]" in flags and "RFA_HAVE_WGMMA" in flags


def test_portable_build_leaves_the_hopper_prefill_out(build):
    # sm_90 (portable PTX) has no wgmma: that kernel compiles empty, warning-free, and is never dispatched to
    out, _ = build
    assert "RFA_HAVE_WGMMA" not in cuda_flags(out)
    assert workspace_bounds(out / "librfa_kernels.so") == [0, 0, 0]
