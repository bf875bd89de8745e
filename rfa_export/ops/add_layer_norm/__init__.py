"""Residual add fused with the LayerNorm after it: plain PyTorch reference and the CUDA kernel;
`add_layer_norm` (op.py) chooses between them."""

from .cuda import add_layer_norm_kernel_supports, cuda_add_layer_norm
from .naive import naive_add_layer_norm
from .op import add_layer_norm

__all__ = ["add_layer_norm", "add_layer_norm_kernel_supports", "cuda_add_layer_norm", "naive_add_layer_norm"]
