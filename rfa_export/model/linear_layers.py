"""Linear layers and the feed-forward of a block, with a one-kernel path for decode-sized inputs."""

from typing import NamedTuple, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.decode_linear import (decode_linear_kernel_supports, decode_linear_splits, triton_decode_linear,
                                 triton_decode_linear_partials)
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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias), then the exact GELU when `gelu`.

    On the CUDA inference path with at most 64 rows (a decoding step) this is one Triton kernel
    (rfa_export/ops/decode_linear): the GEMM, the bias and the GELU together, launched so that it may start
    while the kernel before it finishes.
    """
    if _decode_path(x, weight, bias):
        return triton_decode_linear(x, weight, bias, gelu)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def feed_forward(ffn: nn.Sequential, x: torch.Tensor,
                 partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
    """ffn(x) for a block's Linear, GELU, Linear, Dropout, with the first linear and its GELU as one call.

    partial_sums: the caller takes PartialSums (residual_norm does); on the decode path a second linear
    with a deep inner dimension (few output strips) then runs split over it, and its partial sums are added
    by the residual norm that follows instead of by a reduction kernel of their own.
    """
    fc1, act, fc2, drop = ffn
    if isinstance(act, nn.GELU) and act.approximate == "none":
        h = linear(x, fc1.weight, fc1.bias, gelu=True)
    else:
        h = act(linear(x, fc1.weight, fc1.bias))
    if not _decode_path(h, fc2.weight, fc2.bias):
        return drop(F.linear(h, fc2.weight, fc2.bias))
    splits = decode_linear_splits(fc2.weight)
    if partial_sums and splits > 1 and not (drop.training and drop.p > 0):
        return PartialSums(triton_decode_linear_partials(h, fc2.weight, splits), fc2.bias, h.dtype)
    return drop(triton_decode_linear(h, fc2.weight, fc2.bias, False))
