"""random_features: the one entry point of the feature map; it picks the fused kernel or the reference."""

import torch

from ..dispatch import native_inference
from .cuda import cuda_random_features, random_features_kernel_supports
from .naive import naive_random_features


def random_features(x: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str) -> torch.Tensor:
    """phi(x): x [..., H, dh], sigma [H, dh], w_tilde [H, D, dh] -> [..., H, F] in x's dtype (computed in fp32
    for half inputs). CUDA inference where the kernel takes the shapes: one fused launch; otherwise (training,
    export, CPU) plain PyTorch (naive.py)."""
    if native_inference(x, sigma) and random_features_kernel_supports(x, sigma, w_tilde, kind):
        return cuda_random_features(x, sigma, w_tilde, kind)
    return naive_random_features(x, sigma, w_tilde, kind)
