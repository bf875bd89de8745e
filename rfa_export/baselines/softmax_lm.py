"""A softmax-attention transformer LM of the same shape as RFALanguageModel, with a KV cache for decoding."""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..model.config import RFAConfig
from ..model.layout import init_lm_layout
from ..model.lm import sinusoidal_positions
from ..model.linear_layers import linear, linear_dropout
from ..model.residual_norm import residual_feed_forward, residual_linear, residual_norm
from ..ops.embedding import scaled_embedding

KVCache = List[Tuple[torch.Tensor, torch.Tensor]]


class _SoftmaxBlock(nn.Module):
    def __init__(self, config: RFAConfig):
        super().__init__()
        d, self.h = config.d_model, config.n_heads
        self.ln_attn = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.o_proj = nn.Linear(d, d)
        self.ln_ffn = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(d, config.d_ffn), nn.GELU(), nn.Linear(config.d_ffn, d), nn.Dropout(config.dropout))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        x, f, kv = self.forward_residual(x, None, cache)
        return residual_norm(x, f, None)[0], kv

    def forward_residual(self, x, y, cache):
        """As RFABlock.forward_residual: x + y through the block -> (the stream after attention, the FFN's output,
        the longer cache)."""
        B, T, d = x.shape
        x, qkv = residual_linear(x, y, self.ln_attn, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(B, T, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        if cache is None:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:
            y = nn.functional.scaled_dot_product_attention(q, k, v)
        else:  # new query i sees every cached key and the new keys up to i
            P = k.shape[2] - T
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = linear_dropout(y.transpose(1, 2).reshape(B, T, d), self.o_proj.weight, self.o_proj.bias, self.drop,
                           partial_sums=True)
        x, f = residual_feed_forward(x, y, self.ln_ffn, self.ffn)
        return x, f, (k, v)


class SoftmaxLanguageModel(nn.Module):
    """Same width, depth, FFN, embeddings and positions as RFALanguageModel; attention is softmax."""

    def __init__(self, config: RFAConfig):
        super().__init__()
        init_lm_layout(self, config, _SoftmaxBlock)

    def forward(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None,
                position_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, KVCache]:
        """input_ids [B, T]; cache: per layer (k, v) [B, H, P, dh] -> logits [B, T, V], the longer cache."""
        B, T = input_ids.shape
        if position_ids is None:
            start = 0 if cache is None else cache[0][0].shape[2]
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        x = scaled_embedding(input_ids, self.embed.weight, math.sqrt(self.config.d_model))
        x = self.drop(x + sinusoidal_positions(position_ids, self.config.d_model).to(x.dtype))
        f, new_cache = None, []
        for i, block in enumerate(self.blocks):
            x, f, kv = block.forward_residual(x, f, None if cache is None else cache[i])
            new_cache.append(kv)
        _, h = residual_norm(x, f, self.ln_f)
        return linear(h, self.lm_head.weight, self.lm_head.bias), new_cache
