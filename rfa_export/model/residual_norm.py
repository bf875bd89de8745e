"""The residual add of a pre-LN block together with the LayerNorm that reads its result."""

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..ops.add_layer_norm import add_layer_norm
from .linear_layers import PartialSums


def residual_norm(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None],
                  norm: Optional[nn.LayerNorm]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(x + y, norm(x + y)); y None: no add; norm None: no norm (second result None). y may be a linear
    layer's PartialSums (feed_forward(..., partial_sums=True)), added up on the way (ops/add_layer_norm)."""
    partial = y if isinstance(y, PartialSums) else None
    if partial is not None and (norm is None or partial.dtype != x.dtype):
        y, partial = partial.total(), None
    if norm is None:
        return (x if y is None else x + y), None
    if partial is not None:
        return add_layer_norm(x, None, norm.weight, norm.bias, norm.eps, partial.partials, partial.bias)
    return add_layer_norm(x, y, norm.weight, norm.bias, norm.eps)
