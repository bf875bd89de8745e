"""The random feature map as one CUDA launch (plugins/kernels/random_features.cu), via ctypes."""

import ctypes

import torch

from ..native import load_error, load_kernels

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_KINDS = {"gaussian": 0, "arccos": 1}


class _FeatureArgs(ctypes.Structure):
    _fields_ = [
        ("N", ctypes.c_int), ("H", ctypes.c_int), ("dh", ctypes.c_int), ("D", ctypes.c_int),
        ("kind", ctypes.c_int), ("dtype", ctypes.c_int),
        ("x", ctypes.c_void_p), ("sigma", ctypes.c_void_p), ("w_tilde", ctypes.c_void_p), ("out", ctypes.c_void_p),
    ]


def _bind(lib) -> None:
    lib.rfa_random_features.argtypes = [ctypes.POINTER(_FeatureArgs), ctypes.c_void_p]
    lib.rfa_random_features_check.argtypes = [ctypes.POINTER(_FeatureArgs)]
    lib.rfa_status_string.restype = ctypes.c_char_p


def _args(x, sigma, w_tilde, kind, out_ptr: int) -> _FeatureArgs:
    H, D, dh = w_tilde.shape
    return _FeatureArgs(x.numel() // (H * dh), H, dh, D, _KINDS[kind], _DTYPES[x.dtype],
                        x.data_ptr(), sigma.data_ptr(), w_tilde.data_ptr(), out_ptr)


def random_features_kernel_supports(x: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str) -> bool:
    """True when the fused kernel takes these inputs: CUDA, one dtype of fp32/fp16/bf16, dh and D <= 128."""
    if not (x.is_cuda and x.dtype in _DTYPES and sigma.dtype == x.dtype and w_tilde.dtype == x.dtype) or kind not in _KINDS:
        return False
    if x.numel() == 0 or w_tilde.dim() != 3 or x.shape[-2:] != (w_tilde.shape[0], w_tilde.shape[2]):
        return False
    lib = load_kernels(_bind)
    # the check reads sizes and that pointers are set; x stands in for the output not allocated yet
    return lib is not None and lib.rfa_random_features_check(ctypes.byref(_args(x, sigma, w_tilde, kind, x.data_ptr()))) == 0


def cuda_random_features(x: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str) -> torch.Tensor:
    """Same contract as naive_random_features; x [..., H, dh] -> [..., H, F] on x's stream."""
    lib = load_kernels(_bind)
    if lib is None:
        raise RuntimeError(f"CUDA kernels unavailable: {load_error()}")
    H, D, dh = w_tilde.shape
    x, sigma, w_tilde = x.contiguous(), sigma.contiguous(), w_tilde.contiguous()
    out = torch.empty((*x.shape[:-1], 2 * D if kind == "gaussian" else D), dtype=x.dtype, device=x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    status = lib.rfa_random_features(ctypes.byref(_args(x, sigma, w_tilde, kind, out.data_ptr())), ctypes.c_void_p(stream))
    if status != 0:
        raise RuntimeError(f"rfa_random_features: {lib.rfa_status_string(status).decode()}")
    return out
