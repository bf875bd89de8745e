"""add_layer_norm: the one entry point of the residual add + LayerNorm; it picks the kernel or the reference."""

from typing import Optional, Tuple

import torch

from ..dispatch import native_inference
from .cuda import add_layer_norm_kernel_supports, cuda_add_layer_norm
from .naive import naive_add_layer_norm


def add_layer_norm(x: torch.Tensor, y: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], eps: float, y_partials: Optional[torch.Tensor] = None,
                   y_bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x + y, LayerNorm(x + y)) over the last dim, both in x's dtype (contract: naive.py; y_partials: a split
    GEMM's fp32 partial sums instead of y). CUDA inference where the kernel takes the inputs: one launch
    (decoding a small batch is bound by kernel count); otherwise plain PyTorch."""
    if weight is not None and native_inference(x, weight, bias) and add_layer_norm_kernel_supports(
            x, y, weight, bias, eps, y_partials, y_bias):
        return cuda_add_layer_norm(x, y, weight, bias, eps, y_partials, y_bias)
    return naive_add_layer_norm(x, y, weight, bias, eps, y_partials, y_bias)
