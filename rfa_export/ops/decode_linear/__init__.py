"""y = x W^T + b (optionally exact GELU) for decode-sized inputs: plain PyTorch reference and Triton kernels (one
also doing the residual add and LayerNorm before the layer, at one row); `linear`, `linear_argmax`,
`linear_projecting_features` and, with the residual norm before them, `linear_after_residual_norm`,
`linear_projecting_features_after_residual_norm` and `linear_argmax_after_residual_norm` (op.py) choose between
them."""

from .naive import naive_decode_linear
from .op import (PartialSums, linear, linear_after_residual_norm, linear_argmax, linear_argmax_after_residual_norm,
                 linear_projecting_features, linear_projecting_features_after_residual_norm)
from .triton_linear import (decode_linear_kernel_supports, decode_linear_projection_parts, decode_linear_splits,
                            triton_decode_linear, triton_decode_linear_argmax, triton_decode_linear_partials,
                            triton_decode_linear_projected)
from .triton_norm_linear import (residual_norm_linear_supports, triton_residual_norm_linear,
                                 triton_residual_norm_linear_argmax, triton_residual_norm_linear_projected)

__all__ = [
    "PartialSums", "decode_linear_kernel_supports", "decode_linear_projection_parts", "decode_linear_splits", "linear",
    "linear_after_residual_norm", "linear_argmax", "linear_argmax_after_residual_norm", "linear_projecting_features",
    "linear_projecting_features_after_residual_norm", "naive_decode_linear",
    "residual_norm_linear_supports", "triton_decode_linear", "triton_decode_linear_argmax",
    "triton_decode_linear_partials", "triton_decode_linear_projected", "triton_residual_norm_linear",
    "triton_residual_norm_linear_argmax", "triton_residual_norm_linear_projected",
]
