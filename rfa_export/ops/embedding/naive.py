"""Scaled embedding lookup in plain PyTorch: the reference of the Triton kernel."""

import torch
from torch.nn import functional as F


def naive_scaled_embedding(ids: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """ids [...] int64, weight [V, D] -> [..., D] of weight's dtype: weight[ids] * scale, the product formed in
    fp32 (fp64 for fp64 weights) and rounded once. An id outside [0, V) raises."""
    return F.embedding(ids, weight) * scale
