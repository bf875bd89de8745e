"""The fused cross-attention read (plugins/kernels/cross_read.cu), via ctypes."""

import ctypes
import math

import torch

from ...format.feature_maps import FEATURE_MAPS
from ..native import DTYPE_CODES, FEATURE_KIND_CODES, check_status, load_kernels_for, require_kernels


class _CrossReadArgs(ctypes.Structure):
    _fields_ = [
        ("N", ctypes.c_int), ("rows_per_source", ctypes.c_int), ("H", ctypes.c_int), ("dh", ctypes.c_int),
        ("D", ctypes.c_int), ("kind", ctypes.c_int), ("dtype", ctypes.c_int), ("eps", ctypes.c_float),
        ("q", ctypes.c_void_p), ("sigma", ctypes.c_void_p), ("w_tilde", ctypes.c_void_p), ("state", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
    ]


def _bind(lib) -> None:
    if hasattr(lib, "rfa_cross_read"):
        lib.rfa_cross_read.argtypes = [ctypes.POINTER(_CrossReadArgs), ctypes.c_void_p]
        lib.rfa_cross_read_check.argtypes = [ctypes.POINTER(_CrossReadArgs)]


def _args(q, sigma, w_tilde, kind, state, eps, out_ptr) -> _CrossReadArgs:
    N, T, H, dh = q.shape
    D = w_tilde.shape[1]
    return _CrossReadArgs(N * T, (N * T) // state.shape[0], H, dh, D, FEATURE_KIND_CODES[kind], DTYPE_CODES[q.dtype],
                          float(eps), q.data_ptr(), sigma.data_ptr(), w_tilde.data_ptr(), state.data_ptr(), out_ptr)


def cross_read_kernel_supports(q: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str,
                               state: torch.Tensor, eps: float) -> bool:
    """True when the kernel takes these inputs as they are: CUDA, q [N, T, H, dh] dense with sigma and W~ of its
    dtype (fp32/fp16/bf16), a dense fp32 state [B_src, H, F, dh + 1] with B_src dividing N, dh and D <= 128."""
    if kind not in FEATURE_KIND_CODES or not (q.is_cuda and q.dtype in DTYPE_CODES and q.dim() == 4):
        return False
    N, T, H, dh = q.shape
    if sigma.dtype != q.dtype or w_tilde.dtype != q.dtype or w_tilde.dim() != 3 or w_tilde.shape[0] != H \
            or w_tilde.shape[2] != dh or tuple(sigma.shape) != (H, dh):
        return False
    F = FEATURE_MAPS[kind].feature_size(w_tilde.shape[1])
    if state.dtype != torch.float32 or state.dim() != 4 or tuple(state.shape[1:]) != (H, F, dh + 1) \
            or state.shape[0] < 1 or N % state.shape[0] != 0 or not math.isfinite(eps):
        return False
    if not (q.is_contiguous() and sigma.is_contiguous() and w_tilde.is_contiguous() and state.is_contiguous()):
        return False
    lib = load_kernels_for(q, _bind)
    if lib is None or not hasattr(lib, "rfa_cross_read_check"):
        return False
    return lib.rfa_cross_read_check(ctypes.byref(_args(q, sigma, w_tilde, kind, state, eps, q.data_ptr()))) == 0


def cuda_cross_read(q, sigma, w_tilde, kind, state, eps) -> torch.Tensor:
    """Same contract as naive_cross_read, on q's stream; the caller has checked cross_read_kernel_supports."""
    lib = require_kernels(_bind)
    out = torch.empty_like(q)
    stream = torch.cuda.current_stream(q.device).cuda_stream
    status = lib.rfa_cross_read(ctypes.byref(_args(q, sigma, w_tilde, kind, state, eps, out.data_ptr())),
                                ctypes.c_void_p(stream))
    check_status(lib, status, "rfa_cross_read")
    return out
