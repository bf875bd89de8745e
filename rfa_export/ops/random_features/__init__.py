"""The random feature map phi of RFA: plain PyTorch reference and the fused CUDA kernel; `random_features`
(op.py) chooses between them."""

from .cuda import cuda_random_features, random_features_kernel_supports
from .naive import naive_random_features
from .op import random_features

__all__ = ["cuda_random_features", "naive_random_features", "random_features", "random_features_kernel_supports"]
