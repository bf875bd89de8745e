"""The native kernel library (librfa_kernels.so, built from plugins/kernels/), loaded once through ctypes.

Looked up, in order: $RFA_KERNELS_LIBRARY (an explicit choice), rfa_export/lib/ next to the installed
package (what `pip install .` builds), build/librfa_kernels.so of a source tree (a developer's CMake
build). Each op module binds the functions it calls (argument and result types) through
`load_kernels(bind)`; the codes of the C enums and the status check every call ends with are here once.
"""

import ctypes
import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch

from ..format.feature_maps import FEATURE_MAPS

# rfa_dtype_t (causal_gated_scan.h) and rfa_feature_kind_t (random_features.h)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# the kernels' state storage (docs/op_contract.md, "State dtype") as rfa_dtype_t codes: fp32, bf16, int8 rows
STATE_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 2, torch.int8: 3}
FEATURE_KIND_CODES = {m.name: m.kernel_code for m in FEATURE_MAPS.values()}

_lib = None
_error: Optional[str] = None
_bound = set()
_warned = False


PACKAGE_LIB = Path(__file__).resolve().parents[1] / "lib"  # rfa_export/lib, where pip installs the libraries
KERNELS_FILE = "librfa_kernels.so"


def library_candidates() -> List[Path]:
    env = os.environ.get("RFA_KERNELS_LIBRARY")
    if env:
        return [Path(env)]
    return [PACKAGE_LIB / KERNELS_FILE, Path(__file__).resolve().parents[2] / "build" / KERNELS_FILE]


def library_path() -> Path:
    """The library that is (or would be) loaded: the first candidate that exists, else the first one."""
    candidates = library_candidates()
    return next((p for p in candidates if p.is_file()), candidates[0])


def load_kernels(bind: Callable[[ctypes.CDLL], None]):
    """The loaded library with `bind` applied once, or None (load_error() says why)."""
    global _lib, _error
    if _lib is None and _error is None:
        path = library_path()
        if not path.is_file():
            _error = (f"{' nor '.join(map(str, library_candidates()))} found: this install has no CUDA kernels "
                      "(reinstall with a CUDA toolkit on PATH: pip install . ; or build them: cmake -S . -B build "
                      "&& cmake --build build); CUDA tensors take the slower PyTorch paths")
        else:
            try:
                _lib = ctypes.CDLL(str(path))
                _lib.rfa_status_string.restype = ctypes.c_char_p
                if hasattr(_lib, "rfa_build_info"):
                    _lib.rfa_build_info.restype = ctypes.c_char_p
            except OSError as e:
                _error = f"cannot load {path}: {e}"
    if _lib is not None and bind not in _bound:
        bind(_lib)
        _bound.add(bind)
    return _lib


def _no_binding(lib) -> None:
    pass


def load_kernels_for(x: torch.Tensor, bind: Callable[[ctypes.CDLL], None]):
    """load_kernels for a `*_kernel_supports` check on x: a CUDA tensor meeting no library warns once, since
    the op then runs its much slower PyTorch path (rfa-export doctor says why)."""
    global _warned
    lib = load_kernels(bind)
    if lib is None and x.is_cuda and not _warned:
        _warned = True
        warnings.warn(f"rfa-export: CUDA kernels unavailable ({_error}); run `rfa-export doctor`", RuntimeWarning,
                      stacklevel=3)
    return lib


def load_error() -> Optional[str]:
    return _error


def require_kernels(bind: Callable[[ctypes.CDLL], None]):
    """load_kernels, raising RuntimeError (with load_error()) when the library is unavailable."""
    lib = load_kernels(bind)
    if lib is None:
        raise RuntimeError(f"CUDA kernels unavailable: {_error}")
    return lib


def check_status(lib, status: int, function: str) -> None:
    """Raise RuntimeError naming `function` and the library's message for a non-zero rfa_status_t."""
    if status != 0:
        raise RuntimeError(f"{function}: {lib.rfa_status_string(status).decode()}")


def data_ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    """A tensor's device address for a ctypes argument; None (a null pointer) for an absent optional input."""
    return None if t is None else t.data_ptr()


def build_info() -> Optional[str]:
    """How the loaded library was built ("cuda 13.0.88; architectures 80 90a"), or None without one."""
    lib = load_kernels(_no_binding)
    if lib is None:
        return None
    return lib.rfa_build_info().decode() if hasattr(lib, "rfa_build_info") else "unknown (built before rfa_build_info)"
