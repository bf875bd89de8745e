"""The residual add of a pre-LN block together with the LayerNorm that reads its result."""

from typing import Optional, Tuple

import torch
from torch import nn

from ..ops.add_layer_norm import add_layer_norm_kernel_supports, cuda_add_layer_norm
from .inference_path import cuda_inference


def residual_norm(x: torch.Tensor, y: Optional[torch.Tensor],
                  norm: Optional[nn.LayerNorm]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(x + y, norm(x + y)); y None: no add; norm None: no norm (second result None).

    On the CUDA inference path both come from one kernel (rfa_export/ops/add_layer_norm): decoding a small
    batch is bound by kernel count, and each block has two such pairs.
    """
    if norm is None:
        return (x if y is None else x + y), None
    if (norm.weight is not None and len(norm.normalized_shape) == 1 and cuda_inference(x, norm)
            and add_layer_norm_kernel_supports(x, y, norm.weight, norm.bias, norm.eps)):
        return cuda_add_layer_norm(x, y, norm.weight, norm.bias, norm.eps)
    s = x if y is None else x + y
    return s, norm(s)
