"""A softmax-attention encoder-decoder of the same shape as RFASeq2Seq: the baseline it is measured against.
The decoder keeps a KV cache for its self-attention and the encoder's keys and values per layer for cross
attention (computed once per source, shared by its beams as RFA's cross states are)."""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..format.config import RFASeq2SeqConfig
from ..model.layout import init_seq2seq_layout
from ..model.linear_layers import linear, linear_dropout
from ..model.lm import sinusoidal_positions
from ..model.residual_norm import residual_feed_forward, residual_norm
from ..ops.embedding import scaled_embedding

KV = Tuple[torch.Tensor, torch.Tensor]


class _Attention(nn.Module):
    def __init__(self, config: RFASeq2SeqConfig):
        super().__init__()
        d = config.d_model
        self.h, self.dh = config.n_heads, d // config.n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.drop = nn.Dropout(config.dropout)

    def split(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, H, T, dh]"""
        return linear(x, proj.weight, proj.bias).unflatten(-1, (self.h, self.dh)).transpose(1, 2)

    def merge(self, y: torch.Tensor, partial_sums: bool = False):
        """[B, H, T, dh] -> [B, T, d] through the output projection."""
        return linear_dropout(y.transpose(1, 2).flatten(-2), self.o_proj.weight, self.o_proj.bias, self.drop, partial_sums)

    def memory_kv(self, memory: torch.Tensor) -> KV:
        return self.split(self.k_proj, memory), self.split(self.v_proj, memory)

    def read(self, x: torch.Tensor, kv: KV, key_mask: Optional[torch.Tensor] = None, causal: bool = False,
             partial_sums: bool = False):
        """x [B, T, d] against keys/values [B_mem, H, S, dh], B a multiple of B_mem (rows of one memory row
        contiguous); key_mask [B_mem, S] (nonzero = real key)."""
        B, T, _ = x.shape
        k, v = kv
        Bm = k.shape[0]
        q = self.split(self.q_proj, x)  # [B, H, T, dh]
        if Bm != B:
            q = q.reshape(Bm, B // Bm, self.h, T, self.dh).transpose(1, 2).reshape(Bm, self.h, -1, self.dh)
        mask = None if key_mask is None else (key_mask != 0)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        if Bm != B:
            y = y.reshape(Bm, self.h, B // Bm, T, self.dh).transpose(1, 2).reshape(B, self.h, T, self.dh)
        return self.merge(y, partial_sums)


def _ffn(config):
    return nn.Sequential(nn.Linear(config.d_model, config.d_ffn), nn.GELU(), nn.Linear(config.d_ffn, config.d_model),
                         nn.Dropout(config.dropout))


class _EncoderBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = _Attention(config)
        self.ln_ffn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = _ffn(config)

    def forward_residual(self, x, y, mask):
        """As RFAEncoderBlock.forward_residual: -> (the stream before this block's FFN output f is added, f)."""
        x, h = residual_norm(x, y, self.ln_attn)
        return residual_feed_forward(x, self.attn.read(h, self.attn.memory_kv(h), mask, partial_sums=True),
                                     self.ln_ffn, self.ffn)


class _DecoderBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_self = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attn = _Attention(config)
        self.ln_cross = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = _Attention(config)
        self.ln_ffn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = _ffn(config)

    def forward_residual(self, x, y, cache: Optional[KV], cross: KV, src_mask):
        """The block on x + y (y the previous block's FFN output or None); cache: this layer's self-attention keys
        and values so far -> (the stream before this block's FFN output f is added, f, the longer cache)."""
        x, h = residual_norm(x, y, self.ln_self)
        k, v = self.self_attn.memory_kv(h)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        T, P = h.shape[1], k.shape[2] - h.shape[1]
        if cache is None or T > 1:  # new query i sees the cached keys and the new keys up to i
            mask = torch.ones(T, P + T, dtype=torch.bool, device=h.device).tril(P)
            q = self.self_attn.split(self.self_attn.q_proj, h)
            y = self.self_attn.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), partial_sums=True)
        else:
            y = self.self_attn.read(h, (k, v), partial_sums=True)
        x, h = residual_norm(x, y, self.ln_cross)
        y = self.cross_attn.read(h, cross, src_mask, partial_sums=True)
        x, f = residual_feed_forward(x, y, self.ln_ffn, self.ffn)
        return x, f, (k, v)


class SoftmaxSeq2Seq(nn.Module):
    """Same width, depth, FFN, embeddings and positions as RFASeq2Seq (config.positional must be sinusoidal:
    softmax attention has no order of its own)."""

    def __init__(self, config: RFASeq2SeqConfig):
        super().__init__()
        if config.positional != "sinusoidal":
            raise ValueError("the softmax baseline needs positional='sinusoidal'")
        init_seq2seq_layout(self, config, _EncoderBlock, _DecoderBlock)

    def _embed(self, embed, ids, position_ids=None):
        if position_ids is None:
            position_ids = torch.arange(ids.shape[1], device=ids.device).expand(*ids.shape)
        x = scaled_embedding(ids, embed.weight, math.sqrt(self.config.d_model))
        return self.drop(x + sinusoidal_positions(position_ids, self.config.d_model).to(x.dtype))

    def encode(self, src_ids, src_mask=None) -> Tuple[torch.Tensor, List[KV]]:
        """-> (encoder output, per decoder layer the cross-attention keys and values [B, H, S, dh])."""
        x = self._embed(self.src_embed, src_ids)
        f = None
        for block in self.encoder:
            x, f = block.forward_residual(x, f, src_mask)
        _, h = residual_norm(x, f, self.ln_encoder)
        return h, [block.cross_attn.memory_kv(h) for block in self.decoder]

    def decode(self, tgt_ids, cross: List[KV], cache: Optional[List[KV]] = None, src_mask=None, position_ids=None):
        if position_ids is None:
            start = 0 if cache is None else cache[0][0].shape[2]
            position_ids = torch.arange(start, start + tgt_ids.shape[1], device=tgt_ids.device).expand(*tgt_ids.shape)
        x = self._embed(self.tgt_embed, tgt_ids, position_ids)
        f, new_cache = None, []
        for i, block in enumerate(self.decoder):
            x, f, kv = block.forward_residual(x, f, None if cache is None else cache[i], cross[i], src_mask)
            new_cache.append(kv)
        _, h = residual_norm(x, f, self.ln_f)
        return linear(h, self.lm_head.weight, self.lm_head.bias), new_cache

    def forward(self, src_ids, tgt_ids, src_mask=None, tgt_mask=None):
        """Teacher forcing (tgt_mask is accepted for symmetry with RFASeq2Seq; causal masking suffices)."""
        _, cross = self.encode(src_ids, src_mask)
        return self.decode(tgt_ids, cross, src_mask=src_mask)[0]
