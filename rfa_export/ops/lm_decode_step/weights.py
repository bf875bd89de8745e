"""The parameters of a decoder-only RFA language model as the fused decode step takes them."""

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass(frozen=True)
class LayerWeights:
    """One block: shapes with d = d_model, H heads of dh, D random features, d_ffn = f."""

    ln_attn_weight: torch.Tensor  # [d]
    ln_attn_bias: torch.Tensor  # [d]
    qkvg_weight: torch.Tensor  # [3d (+ H when gated), d]: q, k, v, gate-logit rows in that order
    qkvg_bias: torch.Tensor  # [3d (+ H)]
    sigma: torch.Tensor  # [H, dh]
    w_tilde: torch.Tensor  # [H, D, dh]
    o_weight: torch.Tensor  # [d, d]
    o_bias: torch.Tensor  # [d]
    ln_ffn_weight: torch.Tensor  # [d]
    ln_ffn_bias: torch.Tensor  # [d]
    ffn1_weight: torch.Tensor  # [f, d]
    ffn1_bias: torch.Tensor  # [f]
    ffn2_weight: torch.Tensor  # [d, f]
    ffn2_bias: torch.Tensor  # [d]


@dataclass(frozen=True)
class LMStepWeights:
    """What one decode step reads besides the token, its position and the state (eval mode: no dropout)."""

    n_heads: int
    feature_map: str  # a registered map (rfa_export/format/feature_maps.py)
    gated: bool
    sinusoidal: bool  # add sinusoidal positions to the scaled embedding
    layer_norm_eps: float
    eps: float  # the normaliser's eps (docs/op_contract.md)
    embed_scale: float  # the embedding is multiplied by this (sqrt(d_model))
    embed: torch.Tensor  # [vocab, d]
    layers: List[LayerWeights]
    ln_f_weight: torch.Tensor  # [d]
    ln_f_bias: torch.Tensor  # [d]
    lm_head_weight: torch.Tensor  # [vocab, d]
    lm_head_bias: Optional[torch.Tensor] = None  # [vocab]
