"""y = x W^T + b (optionally exact GELU) for decode-sized inputs: plain PyTorch reference and a Triton kernel;
`linear`, `linear_argmax` and `linear_projecting_features` (op.py) choose between them."""

from .naive import naive_decode_linear
from .op import PartialSums, linear, linear_argmax, linear_projecting_features
from .triton_linear import (decode_linear_kernel_supports, decode_linear_projection_parts, decode_linear_splits,
                            triton_decode_linear, triton_decode_linear_argmax, triton_decode_linear_partials,
                            triton_decode_linear_projected)

__all__ = [
    "PartialSums", "decode_linear_kernel_supports", "decode_linear_projection_parts", "decode_linear_splits", "linear",
    "linear_argmax", "linear_projecting_features", "naive_decode_linear", "triton_decode_linear",
    "triton_decode_linear_argmax", "triton_decode_linear_partials", "triton_decode_linear_projected",
]
