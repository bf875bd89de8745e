"""An RFA encoder-decoder (the paper's machine translation): a non-causal RFA encoder; a decoder of causal
gated RFA self-attention, RFA cross attention and a feed-forward per block. Each decoder layer's cross
attention summarises the source once into a state [B_src, H, F, Dv + 1] (S | z, padding masked out), which
every decoding step reads: decoding needs the self states and those cross states, never the source again."""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..format.config import RFASeq2SeqConfig
from ..ops.causal_gated_scan.state_storage import narrow_state
from ..ops.embedding import scaled_embedding
from .attention import CausalRFASelfAttention, RFAAttention
from .layout import init_seq2seq_layout
from .linear_layers import linear
from .lm import sinusoidal_positions
from .rebuild import rebuilt
from .residual_norm import residual_feed_forward, residual_linear_argmax, residual_norm

State = List[torch.Tensor]


def _ffn(config: RFASeq2SeqConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(config.d_model, config.d_ffn), nn.GELU(), nn.Linear(config.d_ffn, config.d_model),
                         nn.Dropout(config.dropout))


def _attention_args(config: RFASeq2SeqConfig):
    return (config.d_model, config.n_heads, config.feature_map, config.num_features, config.orthogonal_features)


class RFAEncoderBlock(nn.Module):
    """Pre-LN: x + attn(LN(x)) over the real source positions, then x + FFN(LN(x))."""

    def __init__(self, config: RFASeq2SeqConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = RFAAttention(*_attention_args(config), eps=config.normaliser_eps, dropout=config.dropout)
        self.ln_ffn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = _ffn(config)

    def forward_residual(self, x, y, mask):
        """As RFABlock.forward_residual: the block on x + y (y the previous block's FFN output or None) -> (the
        stream before this block's FFN output f is added, f)."""
        x, h = residual_norm(x, y, self.ln_attn)
        return residual_feed_forward(x, self.attn(h, None, mask, partial_sums=True), self.ln_ffn, self.ffn)


class RFADecoderBlock(nn.Module):
    """Pre-LN: causal gated RFA self-attention, RFA cross attention (a per-source state), FFN."""

    def __init__(self, config: RFASeq2SeqConfig):
        super().__init__()
        eps, drop = config.normaliser_eps, config.dropout
        self.ln_self = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attn = CausalRFASelfAttention(*_attention_args(config), gated=config.gated, eps=eps, dropout=drop)
        self.ln_cross = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = RFAAttention(*_attention_args(config), eps=eps, dropout=drop)
        self.ln_ffn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = _ffn(config)

    def forward_residual(self, x, y, state, cross_state, attention_mask, inplace_state):
        """As RFABlock.forward_residual: the block on x + y (y the previous block's FFN output or None) ->
        (the stream before this block's FFN output f is added, f, new self state)."""
        x, a, state = self.self_attn.forward_residual(x, y, self.ln_self, state, attention_mask, inplace_state,
                                                      partial_sums=True)
        x, h = residual_norm(x, a, self.ln_cross)
        c = self.cross_attn.read(h, cross_state, partial_sums=True)
        x, f = residual_feed_forward(x, c, self.ln_ffn, self.ffn)
        return x, f, state


def seq2seq_weight_shapes(config: RFASeq2SeqConfig) -> Dict[str, Tuple[int, ...]]:
    """The names and shapes of RFASeq2Seq(config).state_dict(), derived arithmetically (checkpoints are
    compared with this before anything is built)."""
    d, h, dh, f = config.d_model, config.n_heads, config.head_dim, config.d_ffn

    def attention(prefix, gated=False):
        shapes = {}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.update({f"{prefix}.{proj}.weight": (d, d), f"{prefix}.{proj}.bias": (d,)})
        shapes.update({f"{prefix}.phi.sigma": (h, dh), f"{prefix}.phi.w_tilde": (h, config.num_features, dh)})
        if gated:
            shapes.update({f"{prefix}.gate.weight": (h, d), f"{prefix}.gate.bias": (h,)})
        return shapes

    def norm(name):
        return {f"{name}.weight": (d,), f"{name}.bias": (d,)}

    ffn = {"ffn.0.weight": (f, d), "ffn.0.bias": (f,), "ffn.2.weight": (d, f), "ffn.2.bias": (d,)}
    shapes = {"src_embed.weight": (config.src_vocab_size, d), "tgt_embed.weight": (config.tgt_vocab_size, d)}
    for i in range(config.n_encoder_layers):
        block = {**norm("ln_attn"), **attention("attn"), **norm("ln_ffn"), **ffn}
        shapes.update({f"encoder.{i}.{k}": v for k, v in block.items()})
    shapes.update(norm("ln_encoder"))
    for i in range(config.n_decoder_layers):
        block = {**norm("ln_self"), **attention("self_attn", config.gated), **norm("ln_cross"), **attention("cross_attn"),
                 **norm("ln_ffn"), **ffn}
        shapes.update({f"decoder.{i}.{k}": v for k, v in block.items()})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,), "lm_head.weight": (config.tgt_vocab_size, d)})
    return shapes


class RFASeq2Seq(nn.Module):
    def __init__(self, config: RFASeq2SeqConfig):
        super().__init__()
        init_seq2seq_layout(self, config, RFAEncoderBlock, RFADecoderBlock)

    @property
    def state_dtype(self) -> torch.dtype:
        """What the decoder's self states are stored in between calls (config.state_dtype); cross states and
        accumulation stay float32."""
        return getattr(torch, self.config.state_dtype)

    def with_state_dtype(self, state_dtype: str) -> "RFASeq2Seq":
        """This model storing its self states as state_dtype (the config is checked again: a reduced-precision
        state needs a gate). The same object when nothing changes, otherwise a copy sharing no parameters,
        each on its device and in its dtype."""
        config = RFASeq2SeqConfig.from_dict({**self.config.to_dict(), "state_dtype": state_dtype})
        if config == self.config:
            return self
        return rebuilt(self, config)

    def initial_state(self, batch_size: int, device=None) -> State:
        """The decoder's self states: zeros, one tensor [B, *config.state_shape] of state_dtype per layer."""
        return [torch.zeros((batch_size, *self.config.state_shape), device=device, dtype=self.state_dtype)
                for _ in self.decoder]

    @torch.no_grad()
    def resample_features(self, generator: Optional[torch.Generator] = None) -> None:
        for block in self.encoder:
            block.attn.phi.resample(generator)
        for block in self.decoder:
            block.self_attn.phi.resample(generator)
            block.cross_attn.phi.resample(generator)

    def _embed(self, embed: nn.Embedding, ids: torch.Tensor, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        x = scaled_embedding(ids, embed.weight, math.sqrt(self.config.d_model))
        if self.config.positional == "sinusoidal":
            if position_ids is None:
                position_ids = torch.arange(ids.shape[1], device=ids.device).expand(*ids.shape)
            x = x + sinusoidal_positions(position_ids, self.config.d_model).to(x.dtype)
        return self.drop(x)

    def encode(self, src_ids: torch.Tensor, src_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, State]:
        """src_ids [B, S], src_mask [B, S] (nonzero = real token; padding is ignored exactly) ->
        (encoder output [B, S, d_model], the decoder's cross states: per layer [B, H, F, dh + 1] fp32)."""
        x = self._embed(self.src_embed, src_ids, None)
        f = None
        for block in self.encoder:
            x, f = block.forward_residual(x, f, src_mask)
        _, h = residual_norm(x, f, self.ln_encoder)
        return h, [block.cross_attn.memory_state(h, src_mask) for block in self.decoder]

    def decode(self, tgt_ids: torch.Tensor, cross_states: State, state: Optional[State] = None,
               position_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
               inplace_state: bool = False) -> Tuple[torch.Tensor, State]:
        """
        Args:
            tgt_ids: [B, T] with B a multiple of the cross states' batch (the rows of one source contiguous:
                beams); state: per layer [B, *config.state_shape] of state_dtype, or None (zeros);
            position_ids [B, T] (default 0..T-1);
            attention_mask: [B, T], 0 on padding (which leaves the self state unchanged).
        Returns:
            logits [B, T, tgt_vocab], the new self states.
        """
        x, f, new_state = self._decoder_stream(tgt_ids, cross_states, state, position_ids, attention_mask,
                                               inplace_state)
        _, h = residual_norm(x, f, self.ln_f)
        return linear(h, self.lm_head.weight, self.lm_head.bias), new_state

    def _decoder_stream(self, tgt_ids, cross_states, state, position_ids, attention_mask, inplace_state):
        """decode up to the final norm -> (x, f, new self states): the residual stream [B, T, d_model] before the
        last block's FFN output f is added, for the final norm to add and normalise."""
        x = self._embed(self.tgt_embed, tgt_ids, position_ids)
        f, new_state = None, []
        for i, block in enumerate(self.decoder):
            x, f, s = block.forward_residual(x, f, None if state is None else state[i], cross_states[i],
                                             attention_mask, inplace_state)
            if state is None and self.config.state_dtype != "float32":
                s = narrow_state(s, self.state_dtype)  # from no state the scan returns its accumulation dtype
            new_state.append(s)
        return x, f, new_state

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: Optional[torch.Tensor] = None,
                tgt_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher forcing: logits [B, T, tgt_vocab] for every target position."""
        _, cross = self.encode(src_ids, src_mask)
        return self.decode(tgt_ids, cross, attention_mask=tgt_mask)[0]

    def step(self, token_ids: torch.Tensor, state: State, cross_states: State, positions: torch.Tensor,
             inplace_state: bool = False, next_token: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, State]:
        """One decoding step: token_ids [B], positions [B] -> logits [B, tgt_vocab], new self states.

        next_token: an int64 [B] tensor (it may be token_ids) that receives the logits' argmax (greedy
        decoding), from the LM head's own kernel on the decode path (ops/decode_linear's linear_argmax)."""
        x, f, state = self._decoder_stream(token_ids[:, None], cross_states, state, positions[:, None], None,
                                           inplace_state)
        if next_token is None:
            _, h = residual_norm(x, f, self.ln_f)
            return linear(h[:, 0], self.lm_head.weight, self.lm_head.bias), state
        _, logits = residual_linear_argmax(x, f, self.ln_f, self.lm_head.weight, self.lm_head.bias, next_token)
        return logits[:, 0], state
