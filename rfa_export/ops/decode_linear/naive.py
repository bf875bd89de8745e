"""A linear layer with an optional exact GELU in plain PyTorch: the reference of the Triton kernel."""

from typing import Optional

import torch
from torch.nn import functional as F


def naive_decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        gelu: bool = False) -> torch.Tensor:
    """x [..., K], weight [N, K], bias [N] or None -> [..., N] in x's dtype: x W^T + b, then the exact
    (erf) GELU when `gelu`. Computed in fp32 (or x's dtype if wider) and rounded once."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.linear(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc))
    if gelu:
        y = F.gelu(y)
    return y.to(x.dtype)
