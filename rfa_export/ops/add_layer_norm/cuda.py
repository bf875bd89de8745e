"""Residual add + LayerNorm as one CUDA launch (plugins/kernels/add_layer_norm.cu), via ctypes."""

import ctypes
from typing import Optional, Tuple

import torch

from ..native import DTYPE_CODES, check_status, data_ptr, load_kernels_for, require_kernels


class _AddLayerNormArgs(ctypes.Structure):
    _fields_ = [
        ("N", ctypes.c_int), ("D", ctypes.c_int), ("dtype", ctypes.c_int), ("eps", ctypes.c_float),
        ("x", ctypes.c_void_p), ("y", ctypes.c_void_p), ("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("sum", ctypes.c_void_p), ("out", ctypes.c_void_p), ("y_splits", ctypes.c_int), ("y_bias", ctypes.c_void_p),
    ]


def _bind(lib) -> None:
    lib.rfa_add_layer_norm.argtypes = [ctypes.POINTER(_AddLayerNormArgs), ctypes.c_void_p]
    lib.rfa_add_layer_norm_check.argtypes = [ctypes.POINTER(_AddLayerNormArgs)]


def _args(x, y, weight, bias, eps, sum_ptr, out_ptr, y_partials, y_bias) -> _AddLayerNormArgs:
    D = x.shape[-1]
    added = y if y_partials is None else y_partials
    splits = 0 if y_partials is None else y_partials.shape[0]
    return _AddLayerNormArgs(x.numel() // D, D, DTYPE_CODES[x.dtype], eps, x.data_ptr(), data_ptr(added),
                             weight.data_ptr(), data_ptr(bias), sum_ptr, out_ptr, splits, data_ptr(y_bias))


def add_layer_norm_kernel_supports(x: torch.Tensor, y: Optional[torch.Tensor], weight: torch.Tensor,
                                   bias: Optional[torch.Tensor], eps: float, y_partials: Optional[torch.Tensor] = None,
                                   y_bias: Optional[torch.Tensor] = None) -> bool:
    """True when the kernel takes these inputs: CUDA, all of one dtype of fp32/fp16/bf16, dense, y (if any) of
    x's shape, weight and bias [D] with D <= 4096; or, instead of y, y_partials fp32 [S, *x.shape] with
    2 <= S <= 64 and y_bias [D] (or None) of x's dtype."""
    tensors = [t for t in (x, y, weight, bias, y_bias) if t is not None]
    if not (x.is_cuda and x.dtype in DTYPE_CODES and all(t.dtype == x.dtype and t.device == x.device for t in tensors)):
        return False
    if x.dim() < 1 or x.numel() == 0 or not all(t.is_contiguous() for t in tensors):
        return False
    D = x.shape[-1]
    if (y is not None and y.shape != x.shape) or weight.shape != (D,) or (bias is not None and bias.shape != (D,)):
        return False
    if y_partials is not None:
        if y is not None or y_partials.dtype != torch.float32 or y_partials.device != x.device:
            return False
        if y_partials.shape[1:] != x.shape or not y_partials.is_contiguous() or y_partials.shape[0] < 2:
            return False
    if y_bias is not None and (y_partials is None or y_bias.shape != (D,)):
        return False
    lib = load_kernels_for(x, _bind)
    # the check reads sizes and that pointers are set; x stands in for the outputs not allocated yet
    args = _args(x, y, weight, bias, eps, x.data_ptr(), x.data_ptr(), y_partials, y_bias)
    return lib is not None and lib.rfa_add_layer_norm_check(ctypes.byref(args)) == 0


def cuda_add_layer_norm(x: torch.Tensor, y: Optional[torch.Tensor], weight: torch.Tensor,
                        bias: Optional[torch.Tensor], eps: float, y_partials: Optional[torch.Tensor] = None,
                        y_bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same contract as naive_add_layer_norm, on x's stream; the caller has checked
    add_layer_norm_kernel_supports."""
    lib = require_kernels(_bind)
    has_add = y is not None or y_partials is not None
    s = torch.empty_like(x) if has_add else x
    out = torch.empty_like(x)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    args = _args(x, y, weight, bias, eps, s.data_ptr() if has_add else None, out.data_ptr(), y_partials, y_bias)
    check_status(lib, lib.rfa_add_layer_norm(ctypes.byref(args), ctypes.c_void_p(stream)), "rfa_add_layer_norm")
    return s, out
