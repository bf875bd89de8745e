"""The residual add of a pre-LN block together with the LayerNorm that reads its result (and, decoding one row,
with the linear layer that reads the norm too)."""

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..ops.add_layer_norm import add_layer_norm
from .linear_layers import (PartialSums, feed_forward, linear, linear_after_residual_norm, linear_argmax,
                            linear_argmax_after_residual_norm, linear_dropout)


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


def residual_feed_forward(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], norm: nn.LayerNorm,
                          ffn: nn.Sequential) -> Tuple[torch.Tensor, Union[torch.Tensor, PartialSums]]:
    """(x + y, feed_forward(ffn, norm(x + y), partial_sums=True)): the residual add before a block's FFN and the
    FFN. Decoding one row on CUDA, the add and the norm run inside the FFN's first linear layer's kernel
    (ops/decode_linear: linear_after_residual_norm) where it takes the inputs."""
    fc1, act, fc2, drop = ffn
    if isinstance(act, nn.GELU) and act.approximate == "none":
        fused = linear_after_residual_norm(x, y, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, gelu=True)
        if fused is not None:
            x, h = fused
            return x, linear_dropout(h, fc2.weight, fc2.bias, drop, partial_sums=True)
    x, h = residual_norm(x, y, norm)
    return x, feed_forward(ffn, h, partial_sums=True)


def residual_linear(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], norm: nn.LayerNorm,
                    weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x + y, linear(norm(x + y), weight, bias)): decoding one row on CUDA, the add and the norm run inside
    the linear layer's kernel (ops/decode_linear: linear_after_residual_norm) where it takes the inputs."""
    fused = linear_after_residual_norm(x, y, norm.weight, norm.bias, norm.eps, weight, bias)
    if fused is not None:
        return fused
    x, h = residual_norm(x, y, norm)
    return x, linear(h, weight, bias)


def residual_linear_argmax(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], norm: nn.LayerNorm,
                           weight: torch.Tensor, bias: Optional[torch.Tensor],
                           out_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """residual_linear with the output's argmax over its last dimension written into out_index (int64, x's
    leading dims' elements, dense: greedy decoding's next token), as linear_argmax does; decoding one row on
    CUDA the add and norm run inside the linear layer's kernel where it takes them
    (linear_argmax_after_residual_norm)."""
    out_index = out_index.view(x.shape[:-1])
    fused = linear_argmax_after_residual_norm(x, y, norm.weight, norm.bias, norm.eps, weight, bias, out_index)
    if fused is not None:
        return fused
    x, h = residual_norm(x, y, norm)
    return x, linear_argmax(h, weight, bias, out_index)
