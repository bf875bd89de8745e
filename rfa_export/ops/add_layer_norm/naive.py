"""Residual add + LayerNorm in plain PyTorch: the reference of the CUDA kernel."""

from typing import Optional, Tuple

import torch
from torch.nn import functional as F


def naive_add_layer_norm(x: torch.Tensor, y: Optional[torch.Tensor], weight: torch.Tensor,
                         bias: Optional[torch.Tensor], eps: float, y_partials: Optional[torch.Tensor] = None,
                         y_bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """x, y [..., D] -> (sum, out): sum = x + y (x itself when y is None), out = LayerNorm(sum) over the last
    dim with weight, bias [D]. Both in x's dtype.

    y_partials [S, ..., D] (fp32, instead of y): the partial sums of a GEMM split over its inner dimension;
    the added term is then (their sum + y_bias) rounded once to x's dtype, as that GEMM's output would be.
    """
    if y_partials is not None:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = y_partials.to(acc).sum(0)
        y = (y if y_bias is None else y + y_bias.to(acc)).to(x.dtype)
    s = x if y is None else x + y
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
