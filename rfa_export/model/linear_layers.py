"""Linear layers and the feed-forward of a block, with a one-kernel path for decode-sized inputs."""

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..ops.decode_linear import decode_linear_kernel_supports, triton_decode_linear
from .inference_path import cuda_inference


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias), then the exact GELU when `gelu`.

    On the CUDA inference path with at most 64 rows (a decoding step) this is one Triton kernel
    (rfa_export/ops/decode_linear): the GEMM, the bias and the GELU together, launched so that its weight
    reads overlap the previous kernel.
    """
    if (cuda_inference(x) and not (torch.is_grad_enabled() and (weight.requires_grad or
                                                                (bias is not None and bias.requires_grad)))
            and decode_linear_kernel_supports(x, weight, bias)):
        return triton_decode_linear(x, weight, bias, gelu)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def feed_forward(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """ffn(x) for a block's Linear, GELU, Linear, Dropout, with the first linear and its GELU as one call."""
    fc1, act, fc2, drop = ffn
    if isinstance(act, nn.GELU) and act.approximate == "none":
        h = linear(x, fc1.weight, fc1.bias, gelu=True)
    else:
        h = act(linear(x, fc1.weight, fc1.bias))
    return drop(linear(h, fc2.weight, fc2.bias))
