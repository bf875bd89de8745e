"""Linear layers and the feed-forward of a block, with a one-kernel path for decode-sized inputs."""

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.decode_linear import (decode_linear_kernel_supports, decode_linear_projection_parts, decode_linear_splits,
                                 triton_decode_linear, triton_decode_linear_partials, triton_decode_linear_projected)
from .inference_path import cuda_inference


class PartialSums(NamedTuple):
    """A linear layer's output left as fp32 partial sums over its inner dimension, [S, ..., N], with its
    bias [N] (or None) and the dtype the output would have: the residual norm that reads it adds them up."""

    partials: torch.Tensor
    bias: Optional[torch.Tensor]
    dtype: torch.dtype

    def total(self) -> torch.Tensor:
        y = self.partials.sum(0)
        return (y if self.bias is None else y + self.bias.float()).to(self.dtype)


def _decode_path(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    if not cuda_inference(x):
        return False
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    return decode_linear_kernel_supports(x, weight, bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False,
           partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
    """F.linear(x, weight, bias), then the exact GELU when `gelu`.

    On the CUDA inference path with at most 64 rows (a decoding step) this is one Triton kernel
    (rfa_export/ops/decode_linear): the GEMM, the bias and the GELU together, launched so that it may start
    while the kernel before it finishes.
    partial_sums: the caller takes PartialSums (residual_norm does). On the decode path a layer with a deep
    inner dimension for its few output column strips then runs split over it (decode_linear_splits), and
    the residual norm that follows adds its partial sums up instead of a reduction kernel of their own.
    """
    if not _decode_path(x, weight, bias):
        y = F.linear(x, weight, bias)
        return F.gelu(y) if gelu else y
    if partial_sums and not gelu:
        splits = decode_linear_splits(weight)
        if splits > 1:
            return PartialSums(triton_decode_linear_partials(x, weight, splits), bias, x.dtype)
    return triton_decode_linear(x, weight, bias, gelu)


def linear_projecting_features(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], sigma: torch.Tensor,
                               w_tilde: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(linear(x, weight, bias), proj): the fused q/k/v projection of a decoding step, which on the one-kernel
    path also projects q and k for their random features (ops/decode_linear's triton_decode_linear_projected:
    the decode step kernel then skips that work); proj is None where that path does not take the inputs."""
    if _decode_path(x, weight, bias) and decode_linear_projection_parts(x, weight, sigma, w_tilde):
        return triton_decode_linear_projected(x, weight, bias, sigma, w_tilde)
    return linear(x, weight, bias), None


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
