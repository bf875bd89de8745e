"""The native kernel library (librfa_kernels.so, built from plugins/kernels/), loaded once through ctypes.

Looked up at $RFA_KERNELS_LIBRARY, then build/librfa_kernels.so of the source tree. Each op module binds
the functions it calls (argument and result types) through `load_kernels(bind)`; the codes of the C enums
and the status check every call ends with are here once.
"""

import ctypes
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from ..format.feature_maps import FEATURE_MAPS

# rfa_dtype_t (causal_gated_scan.h) and rfa_feature_kind_t (random_features.h)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FEATURE_KIND_CODES = {m.name: m.kernel_code for m in FEATURE_MAPS.values()}

_lib = None
_error: Optional[str] = None
_bound = set()


def library_path() -> Path:
    env = os.environ.get("RFA_KERNELS_LIBRARY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "build" / "librfa_kernels.so"


def load_kernels(bind: Callable[[ctypes.CDLL], None]):
    """The loaded library with `bind` applied once, or None (load_error() says why)."""
    global _lib, _error
    if _lib is None and _error is None:
        path = library_path()
        if not path.is_file():
            _error = f"{path} not found (build it: cmake -S . -B build && cmake --build build)"
        else:
            try:
                _lib = ctypes.CDLL(str(path))
                _lib.rfa_status_string.restype = ctypes.c_char_p
            except OSError as e:
                _error = f"cannot load {path}: {e}"
    if _lib is not None and bind not in _bound:
        bind(_lib)
        _bound.add(bind)
    return _lib


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
