"""The residual add of a pre-LN block together with the LayerNorm that reads its result."""

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..ops.add_layer_norm import add_layer_norm_kernel_supports, cuda_add_layer_norm
from .inference_path import cuda_inference
from .linear_layers import PartialSums


def residual_norm(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None],
                  norm: Optional[nn.LayerNorm]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(x + y, norm(x + y)); y None: no add; norm None: no norm (second result None). y may be a linear
    layer's PartialSums (feed_forward(..., partial_sums=True)): the kernel adds them up on the way.

    On the CUDA inference path both come from one kernel (rfa_export/ops/add_layer_norm): decoding a small
    batch is bound by kernel count, and each block has two such pairs.
    """
    partial = y if isinstance(y, PartialSums) else None
    if norm is not None and norm.weight is not None and len(norm.normalized_shape) == 1 and cuda_inference(x, norm):
        if partial is None and add_layer_norm_kernel_supports(x, y, norm.weight, norm.bias, norm.eps):
            return cuda_add_layer_norm(x, y, norm.weight, norm.bias, norm.eps)
        if partial is not None and partial.dtype == x.dtype and add_layer_norm_kernel_supports(
                x, None, norm.weight, norm.bias, norm.eps, partial.partials, partial.bias):
            return cuda_add_layer_norm(x, None, norm.weight, norm.bias, norm.eps, partial.partials, partial.bias)
    if partial is not None:
        y = partial.total()
    s = x if y is None else x + y
    return s, (None if norm is None else norm(s))
