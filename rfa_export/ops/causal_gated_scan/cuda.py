"""rfa::CausalGatedScan on CUDA through the native kernels (librfa_kernels.so, plugins/kernels/), via ctypes.

The library is looked up as rfa_export/ops/native.py says (installed with the package, or a build/). When it
is missing, or a shape is outside what the kernels support (F or Dv not a multiple of 16 in [16, 256]), the
op runs the chunked torch path instead; `kernels_available()` and `kernel_supports()` say which.
"""

import ctypes
from typing import Optional, Tuple

import torch

from ..native import DTYPE_CODES, STATE_DTYPE_CODES, check_status, data_ptr, load_error, load_kernels, load_kernels_for, require_kernels
from .naive import final_state_dtype
from .state_storage import state_columns
from .readout import DEFAULT_EPS


class _ScanArgs(ctypes.Structure):
    _fields_ = [
        ("B", ctypes.c_int), ("T", ctypes.c_int), ("H", ctypes.c_int), ("F", ctypes.c_int), ("Dv", ctypes.c_int),
        ("dtype", ctypes.c_int), ("eps", ctypes.c_float),
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("g", ctypes.c_void_p),
        ("initial_state", ctypes.c_void_p), ("out", ctypes.c_void_p), ("final_state", ctypes.c_void_p),
        ("state_dtype", ctypes.c_int),
    ]


def _bind(lib) -> None:
    lib.rfa_causal_gated_scan.argtypes = [ctypes.POINTER(_ScanArgs), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.rfa_causal_gated_scan_path.argtypes = [ctypes.POINTER(_ScanArgs), ctypes.c_int, ctypes.c_void_p]
    lib.rfa_scan_check.argtypes = [ctypes.c_int] * 6
    lib.rfa_scan_workspace_size.argtypes = [ctypes.c_int] * 6
    lib.rfa_scan_workspace_size.restype = ctypes.c_size_t
    lib.rfa_scan_state_workspace_size.argtypes = [ctypes.c_int] * 5
    lib.rfa_scan_state_workspace_size.restype = ctypes.c_size_t


def _load():
    return load_kernels(_bind)


def kernels_available() -> bool:
    return _load() is not None


def kernels_unavailable_reason() -> Optional[str]:
    return load_error()


def kernel_supports(q: torch.Tensor, v: torch.Tensor, state: Optional[torch.Tensor] = None) -> bool:
    """Whether the kernels take these inputs."""
    lib = load_kernels_for(q, _bind)
    if lib is None or not q.is_cuda or q.dtype not in DTYPE_CODES:
        return False
    if state is not None and state.dtype not in STATE_DTYPE_CODES:
        return False
    B, T, H, F = q.shape
    return lib.rfa_scan_check(B, max(T, 1), H, F, v.shape[-1], DTYPE_CODES[q.dtype]) == 0


_workspace_bytes = {}  # (device index, F, Dv, dtype code) -> rfa_scan_workspace_size (independent of B, T, H)


def _workspace(lib, q: torch.Tensor, Dv: int, state_dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], int]:
    """A prefill's workspace, from the caching allocator on the current stream: an int8-row state's fp32 copy
    (needed) and then what lets the Hopper prefill split long sequences of few (b, h) across the GPU
    (optional); (None, 0) where the kernels use none."""
    B, _, H, F = q.shape
    key = (q.device.index, F, Dv, DTYPE_CODES[q.dtype])
    if key not in _workspace_bytes:
        _workspace_bytes[key] = int(lib.rfa_scan_workspace_size(1, 2, 1, F, Dv, key[3]))
    nbytes = _workspace_bytes[key] + int(lib.rfa_scan_state_workspace_size(B, H, F, Dv, STATE_DTYPE_CODES[state_dtype]))
    if nbytes == 0:
        return None, 0
    return torch.empty(nbytes, dtype=torch.uint8, device=q.device), nbytes


def cuda_causal_gated_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    eps: float = DEFAULT_EPS,
    path: Optional[int] = None,
    out_state: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The native kernels (same contract as naive_causal_gated_scan). path None = dispatch (step kernel for
    T == 1, chunked otherwise, with the workspace that an int8-row state's prefill needs and that lets the
    Hopper prefill split long sequences of few (b, h)), 0 = chunked (no workspace: no split, no int8 state),
    1 = one step launch per time step, 2 = chunked with the mma.sync prefill where the Hopper wgmma one would
    run (comparisons). `out_state` may be `initial_state` itself for an in-place update; `out` / `out_state`
    are written, never read (tests poison them first)."""
    lib = require_kernels(_bind)
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = None if g is None else g.contiguous()
    s0 = None if initial_state is None else initial_state.contiguous()
    if out is None:
        out = torch.empty((B, T, H, Dv), dtype=v.dtype, device=v.device)
    state_dtype = final_state_dtype(q.dtype, initial_state)
    state = out_state if out_state is not None else torch.empty((B, H, F, state_columns(Dv, state_dtype)),
                                                                 dtype=state_dtype, device=q.device)
    if state.dtype != state_dtype:
        raise ValueError(f"out_state dtype {state.dtype} differs from the state's {state_dtype}")
    args = _ScanArgs(B, T, H, F, Dv, DTYPE_CODES[q.dtype], float(eps),
                     data_ptr(q), data_ptr(k), data_ptr(v), data_ptr(g), data_ptr(s0), data_ptr(out), data_ptr(state),
                     STATE_DTYPE_CODES[state_dtype])
    stream = torch.cuda.current_stream(q.device).cuda_stream
    if path is None:
        workspace, nbytes = _workspace(lib, q, Dv, state_dtype) if T > 1 else (None, 0)
        status = lib.rfa_causal_gated_scan(ctypes.byref(args), data_ptr(workspace), nbytes, ctypes.c_void_p(stream))
    else:
        status = lib.rfa_causal_gated_scan_path(ctypes.byref(args), int(path), ctypes.c_void_p(stream))
    check_status(lib, status, "rfa_causal_gated_scan")
    return out, state
