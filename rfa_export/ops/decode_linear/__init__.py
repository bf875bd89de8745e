"""y = x W^T + b (optionally exact GELU) for decode-sized inputs: plain PyTorch reference and a Triton kernel."""

from .naive import naive_decode_linear
from .triton_linear import decode_linear_kernel_supports, triton_decode_linear

__all__ = ["decode_linear_kernel_supports", "naive_decode_linear", "triton_decode_linear"]
