"""The linear layers of a block as the model composes them (dropout, the feed-forward); the layers
themselves are ops/decode_linear's linear, linear_argmax, linear_projecting_features and their forms with the
residual norm before them."""

from typing import Optional, Union

import torch
from torch import nn

from ..ops.decode_linear import (PartialSums, linear, linear_after_residual_norm, linear_argmax,
                                 linear_argmax_after_residual_norm, linear_projecting_features,
                                 linear_projecting_features_after_residual_norm)

__all__ = ["PartialSums", "feed_forward", "linear", "linear_after_residual_norm", "linear_argmax",
           "linear_argmax_after_residual_norm", "linear_dropout", "linear_projecting_features",
           "linear_projecting_features_after_residual_norm"]


def linear_dropout(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dropout: nn.Dropout,
                   partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
    """dropout(linear(x, weight, bias)); with partial_sums, the linear's PartialSums where dropout does
    nothing (eval mode or p = 0), since dropout cannot act on partial sums."""
    active = dropout.training and dropout.p > 0
    y = linear(x, weight, bias, partial_sums=partial_sums and not active)
    return y if isinstance(y, PartialSums) else dropout(y)


def feed_forward(ffn: nn.Sequential, x: torch.Tensor,
                 partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
    """ffn(x) for a block's Linear, GELU, Linear, Dropout, with the first linear and its GELU as one call.

    partial_sums: the second linear's output may be PartialSums (see linear).
    """
    fc1, act, fc2, drop = ffn
    if isinstance(act, nn.GELU) and act.approximate == "none":
        h = linear(x, fc1.weight, fc1.bias, gelu=True)
    else:
        h = act(linear(x, fc1.weight, fc1.bias))
    return linear_dropout(h, fc2.weight, fc2.bias, drop, partial_sums)
