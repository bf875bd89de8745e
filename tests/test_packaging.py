"""pip builds the package from the one CMake description: a CPU-only wheel without nvcc, a wheel with the
CUDA kernels (sm_80 and sm_90a) where nvcc is found; each installs into a fresh venv and runs from there."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import workspace_bounds

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path, **env) -> Path:
    """pip wheel . without build isolation (scikit-build-core comes from the test extras, so no network)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-w", str(out), "-q"], capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("rfa_export-*.whl")
    return wheel


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A new venv with only the wheel installed; its dependencies (torch, onnxruntime, ...) are borrowed
    from the test environment through a plain path entry, which does not bring the editable install along."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(path / "bin" / "python"), "install", "--no-deps",
                           "-q", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path / "bin"


def run_in(bin_dir: Path, *argv, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RFA_KERNELS_LIBRARY")}
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=cwd, env=env)


def test_cpu_wheel_builds_and_installs_without_nvcc(tmp_path, bundled_export):
    wheel = build_wheel(tmp_path / "dist", CUDACXX="/nonexistent/nvcc")  # as on a machine with no CUDA toolkit
    assert wheel.name.endswith("py3-none-linux_x86_64.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rfa_export/runtime/decoder.py" in names and not [n for n in names if n.endswith(".so")]
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    where = run_in(bin_dir, "python", "-c", "import rfa_export, sys; print(rfa_export.__file__)", cwd=tmp_path)
    assert str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr
    doctor = run_in(bin_dir, "rfa-export", "doctor", cwd=tmp_path)
    assert doctor.returncode == 0 and "no  CUDA kernels" in doctor.stdout and "this install has no CUDA kernels" in doctor.stdout
    generated = run_in(bin_dir, "rfa-export", "generate", str(bundled_export), "--prompt", "The import", "--max-new-tokens",
                       "5", cwd=tmp_path)
    assert generated.returncode == 0 and len(generated.stdout) > 1, generated.stderr


def test_wheel_with_the_cuda_kernels(tmp_path):
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc (CUDA toolkit) not installed: the wheel would have no kernels")
    wheel = build_wheel(tmp_path / "dist", PATH=os.environ["PATH"] + ":/usr/local/cuda/bin")
    with zipfile.ZipFile(wheel) as z:
        assert "rfa_export/lib/librfa_kernels.so" in z.namelist()
        library = z.read("rfa_export/lib/librfa_kernels.so")
    assert b"architectures 80 90a" in library  # the default: sm_80 and sm_90a
    (tmp_path / "librfa_kernels.so").write_bytes(library)
    # sm_90a has the Hopper wgmma prefill; its sequence split's workspace: one fp32 [128, 65] state slab per
    # (segment, b, h), at least one per multiprocessor of an H100/H200 (132); none for fp32, which it does not run
    fp32, fp16, bf16 = workspace_bounds(tmp_path / "librfa_kernels.so")
    assert fp32 == 0 and fp16 == bf16 and fp16 % (128 * 65 * 4) == 0 and fp16 // (128 * 65 * 4) >= 132
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    doctor = run_in(bin_dir, "rfa-export", "doctor", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    line = next(x for x in doctor.stdout.splitlines() if "CUDA kernels" in x)
    assert line.split()[0] == "ok" and f"{tmp_path / 'venv'}" in line and "architectures 80 90a" in line, line
