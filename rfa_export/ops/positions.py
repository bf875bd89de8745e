"""Sinusoidal position embeddings, shared by the models and by the fused decode step's reference."""

import math

import torch


def sinusoidal_positions(position_ids: torch.Tensor, d_model: int) -> torch.Tensor:
    """[B, T] int positions -> [B, T, d_model] float32, defined for any position."""
    half = d_model // 2
    freq = torch.exp(torch.arange(half, device=position_ids.device, dtype=torch.float32) * (-math.log(10000.0) / half))
    angle = position_ids.to(torch.float32).unsqueeze(-1) * freq
    pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)
    if d_model % 2:
        pe = torch.nn.functional.pad(pe, (0, 1))
    return pe
