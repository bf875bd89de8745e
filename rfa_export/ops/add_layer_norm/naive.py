"""Residual add + LayerNorm in plain PyTorch: the reference of the CUDA kernel."""

from typing import Optional, Tuple

import torch
from torch.nn import functional as F


def naive_add_layer_norm(x: torch.Tensor, y: Optional[torch.Tensor], weight: torch.Tensor,
                         bias: Optional[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """x, y [..., D] -> (sum, out): sum = x + y (x itself when y is None), out = LayerNorm(sum) over the last
    dim with weight, bias [D]. Both in x's dtype."""
    s = x if y is None else x + y
    return s, F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
