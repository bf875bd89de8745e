"""The native kernel library (librfa_kernels.so, built from plugins/kernels/), loaded once through ctypes.

Looked up at $RFA_KERNELS_LIBRARY, then build/librfa_kernels.so of the source tree. Each op module binds
the functions it calls (argument and result types) through `load_kernels(bind)`.
"""

import ctypes
import os
from pathlib import Path
from typing import Callable, Optional

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
            except OSError as e:
                _error = f"cannot load {path}: {e}"
    if _lib is not None and bind not in _bound:
        bind(_lib)
        _bound.add(bind)
    return _lib


def load_error() -> Optional[str]:
    return _error
