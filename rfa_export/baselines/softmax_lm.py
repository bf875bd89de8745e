"""A softmax-attention transformer LM of the same shape as RFALanguageModel, with a KV cache for decoding."""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..model.config import RFAConfig
from ..model.lm import sinusoidal_positions
from ..model.linear_layers import linear, linear_dropout
from ..model.residual_norm import residual_feed_forward, residual_norm

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
        x, _, kv = self.forward_normed(x, self.ln_attn(x), cache, None)
        return x, kv

    def forward_normed(self, x, h, cache, next_norm):
        """As RFABlock.forward_normed: h = ln_attn(x) -> (output, next_norm of it or None, the longer cache)."""
        B, T, d = x.shape
        q, k, v = linear(h, self.qkv.weight, self.qkv.bias).view(B, T, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
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
        x, h = residual_norm(x, f, next_norm)
        return x, h, (k, v)


class SoftmaxLanguageModel(nn.Module):
    """Same width, depth, FFN, embeddings and positions as RFALanguageModel; attention is softmax."""

    def __init__(self, config: RFAConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=config.d_model ** -0.5)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_SoftmaxBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None,
                position_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, KVCache]:
        """input_ids [B, T]; cache: per layer (k, v) [B, H, P, dh] -> logits [B, T, V], the longer cache."""
        B, T = input_ids.shape
        if position_ids is None:
            start = 0 if cache is None else cache[0][0].shape[2]
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        x = self.embed(input_ids) * math.sqrt(self.config.d_model)
        x = self.drop(x + sinusoidal_positions(position_ids, self.config.d_model).to(x.dtype))
        norms = [block.ln_attn for block in self.blocks] + [self.ln_f]
        _, h = residual_norm(x, None, norms[0])
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, h, kv = block.forward_normed(x, h, None if cache is None else cache[i], norms[i + 1])
            new_cache.append(kv)
        return linear(h, self.lm_head.weight, self.lm_head.bias), new_cache
