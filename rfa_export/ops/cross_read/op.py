"""cross_read: the one entry point of the cross-attention read; the fused kernel or the reference."""

import torch

from ..dispatch import native_inference
from .cuda import cross_read_kernel_supports, cuda_cross_read
from .naive import naive_cross_read


def cross_read(q: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str, state: torch.Tensor,
               eps: float) -> torch.Tensor:
    """q [N, T, H, dh], state [B_src, H, F, dh + 1] -> out [N, T, H, dh] (contract: naive.py). CUDA inference
    where the kernel takes the inputs: one launch; otherwise (training, export, CPU) plain PyTorch."""
    if native_inference(q, sigma) and cross_read_kernel_supports(q, sigma, w_tilde, kind, state, eps):
        return cuda_cross_read(q, sigma, w_tilde, kind, state, eps)
    return naive_cross_read(q, sigma, w_tilde, kind, state, eps)
