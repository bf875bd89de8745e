"""y = x W^T + b (optionally exact GELU) for decode-sized inputs: plain PyTorch reference and a Triton kernel."""

from .naive import naive_decode_linear
from .triton_linear import (decode_linear_kernel_supports, decode_linear_projection_parts, decode_linear_splits,
                            triton_decode_linear, triton_decode_linear_partials, triton_decode_linear_projected)

__all__ = [
    "decode_linear_kernel_supports", "decode_linear_projection_parts", "decode_linear_splits", "naive_decode_linear",
    "triton_decode_linear", "triton_decode_linear_partials", "triton_decode_linear_projected",
]
