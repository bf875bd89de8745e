"""The random feature map as one CUDA launch (plugins/kernels/random_features.cu), via ctypes."""

import ctypes

import torch

from ...format.feature_maps import FEATURE_MAPS
from ..native import DTYPE_CODES, FEATURE_KIND_CODES, check_status, load_kernels_for, require_kernels


class _FeatureArgs(ctypes.Structure):
    _fields_ = [
        ("N", ctypes.c_int), ("H", ctypes.c_int), ("dh", ctypes.c_int), ("D", ctypes.c_int),
        ("kind", ctypes.c_int), ("dtype", ctypes.c_int),
        ("x", ctypes.c_void_p), ("sigma", ctypes.c_void_p), ("w_tilde", ctypes.c_void_p), ("out", ctypes.c_void_p),
    ]


def _bind(lib) -> None:
    lib.rfa_random_features.argtypes = [ctypes.POINTER(_FeatureArgs), ctypes.c_void_p]
    lib.rfa_random_features_check.argtypes = [ctypes.POINTER(_FeatureArgs)]


def _args(x, sigma, w_tilde, kind, out_ptr: int) -> _FeatureArgs:
    H, D, dh = w_tilde.shape
    return _FeatureArgs(x.numel() // (H * dh), H, dh, D, FEATURE_KIND_CODES[kind], DTYPE_CODES[x.dtype],
                        x.data_ptr(), sigma.data_ptr(), w_tilde.data_ptr(), out_ptr)


def random_features_kernel_supports(x: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str) -> bool:
    """True when the fused kernel takes these inputs: CUDA, one dtype of fp32/fp16/bf16, dh and D <= 128."""
    if not (x.is_cuda and x.dtype in DTYPE_CODES and sigma.dtype == x.dtype and w_tilde.dtype == x.dtype) or kind not in FEATURE_KIND_CODES:
        return False
    if x.numel() == 0 or w_tilde.dim() != 3 or x.shape[-2:] != (w_tilde.shape[0], w_tilde.shape[2]):
        return False
    lib = load_kernels_for(x, _bind)
    # the check reads sizes and that pointers are set; x stands in for the output not allocated yet
    return lib is not None and lib.rfa_random_features_check(ctypes.byref(_args(x, sigma, w_tilde, kind, x.data_ptr()))) == 0


def cuda_random_features(x: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str) -> torch.Tensor:
    """Same contract as naive_random_features; x [..., H, dh] -> [..., H, F] on x's stream."""
    lib = require_kernels(_bind)
    H, D, dh = w_tilde.shape
    x, sigma, w_tilde = x.contiguous(), sigma.contiguous(), w_tilde.contiguous()
    out = torch.empty((*x.shape[:-1], FEATURE_MAPS[kind].feature_size(D)), dtype=x.dtype, device=x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    status = lib.rfa_random_features(ctypes.byref(_args(x, sigma, w_tilde, kind, out.data_ptr())), ctypes.c_void_p(stream))
    check_status(lib, status, "rfa_random_features")
    return out
