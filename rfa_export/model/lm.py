"""A decoder-only RFA language model: parallel forward for training, a step form for decoding."""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..ops.lm_decode_step import LayerWeights, LMStepWeights, lm_decode_step_
from ..ops.causal_gated_scan.state_storage import narrow_state
from ..ops.embedding import scaled_embedding
from ..ops.positions import sinusoidal_positions
from .attention import CausalRFASelfAttention
from .config import RFAConfig
from .layout import init_lm_layout
from .linear_layers import linear
from .rebuild import rebuilt
from .residual_norm import residual_feed_forward, residual_linear_argmax, residual_norm

State = List[torch.Tensor]


def language_model_weight_shapes(config: RFAConfig) -> Dict[str, Tuple[int, ...]]:
    """The names and shapes of RFALanguageModel(config).state_dict(), derived arithmetically: a checkpoint
    is compared with this before anything is built (a config claiming 10^7 layers must cost nothing)."""
    d, h, dh, f = config.d_model, config.n_heads, config.head_dim, config.d_ffn
    block = {"ln_attn.weight": (d,), "ln_attn.bias": (d,)}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        block.update({f"attn.{proj}.weight": (d, d), f"attn.{proj}.bias": (d,)})
    block.update({"attn.phi.sigma": (h, dh), "attn.phi.w_tilde": (h, config.num_features, dh)})
    if config.gated:
        block.update({"attn.gate.weight": (h, d), "attn.gate.bias": (h,)})
    block.update({"ln_ffn.weight": (d,), "ln_ffn.bias": (d,), "ffn.0.weight": (f, d), "ffn.0.bias": (f,),
                  "ffn.2.weight": (d, f), "ffn.2.bias": (d,)})
    shapes = {"embed.weight": (config.vocab_size, d)}
    for i in range(config.n_layers):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,), "lm_head.weight": (config.vocab_size, d)})
    return shapes


class RFABlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: RFAConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = CausalRFASelfAttention(
            config.d_model, config.n_heads, config.feature_map, config.num_features,
            config.orthogonal_features, config.gated, config.normaliser_eps, config.dropout,
        )
        self.ln_ffn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.d_model, config.d_ffn), nn.GELU(), nn.Linear(config.d_ffn, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x, state=None, attention_mask=None, inplace_state=False):
        x, f, state = self.forward_residual(x, None, state, attention_mask, inplace_state)
        return residual_norm(x, f, None)[0], state

    def step_weights(self) -> LayerWeights:
        attn = self.attn
        qkvg_weight, qkvg_bias = attn.fused_projection_params()
        fc1, fc2 = self.ffn[0], self.ffn[2]
        return LayerWeights(*(t.detach() for t in (
            self.ln_attn.weight, self.ln_attn.bias, qkvg_weight, qkvg_bias, attn.phi.sigma, attn.phi.w_tilde,
            attn.o_proj.weight, attn.o_proj.bias, self.ln_ffn.weight, self.ln_ffn.bias, fc1.weight, fc1.bias,
            fc2.weight, fc2.bias)))

    def forward_residual(self, x, y, state, attention_mask, inplace_state):
        """The block on the residual stream x + y, each residual add done together with the LayerNorm after it.

        x: the residual stream before the previous block's FFN output y is added (a tensor, PartialSums, or
        None) -> (the stream after this block's attention, this block's FFN output f (PartialSums where the
        decode path splits its GEMM), new state): the block's output is x + f, added by whatever reads it next
        with its own LayerNorm (the next block's, or the final one).
        """
        x, a, state = self.attn.forward_residual(x, y, self.ln_attn, state, attention_mask, inplace_state,
                                                 partial_sums=True)
        x, f = residual_feed_forward(x, a, self.ln_ffn, self.ffn)
        return x, f, state


class RFALanguageModel(nn.Module):
    def __init__(self, config: RFAConfig):
        super().__init__()
        init_lm_layout(self, config, RFABlock)

    @property
    def state_dtype(self) -> torch.dtype:
        """What the state is stored in between calls (config.state_dtype); the scan accumulates in fp32."""
        return getattr(torch, self.config.state_dtype)

    def with_state_dtype(self, state_dtype: str) -> "RFALanguageModel":
        """This model storing its state as state_dtype ("float32", "bfloat16" or "int8"; the config is checked
        again: a reduced-precision state needs a gate). The same object when nothing changes, otherwise a copy
        sharing no parameters, each on its device and in its dtype."""
        config = RFAConfig.from_dict({**self.config.to_dict(), "state_dtype": state_dtype})
        if config == self.config:
            return self
        return rebuilt(self, config)

    def initial_state(self, batch_size: int, device=None) -> State:
        """Zeros, one tensor [B, *config.state_shape] of state_dtype per layer."""
        return [torch.zeros((batch_size, *self.config.state_shape), device=device, dtype=self.state_dtype)
                for _ in self.blocks]

    @torch.no_grad()
    def resample_features(self, generator: Optional[torch.Generator] = None) -> None:
        for block in self.blocks:
            block.attn.phi.resample(generator)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: Optional[State] = None,
        position_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inplace_state: bool = False,
    ) -> Tuple[torch.Tensor, State]:
        """
        Args:
            input_ids: [B, T] int64.
            state: per-layer [B, *config.state_shape] of state_dtype, or None for an empty context.
            position_ids: [B, T] int64 absolute positions (default 0..T-1).
            attention_mask: [B, T], 0 on padding positions (which leave the state unchanged).
            inplace_state: overwrite the given state tensors instead of returning new ones (decoding loops).
        Returns:
            logits [B, T, vocab], the new state.
        """
        x, f, new_state = self._final_stream(input_ids, state, position_ids, attention_mask, inplace_state)
        _, h = residual_norm(x, f, self.ln_f)
        return linear(h, self.lm_head.weight, self.lm_head.bias), new_state

    def _final_stream(self, input_ids, state, position_ids, attention_mask, inplace_state):
        """forward up to the final norm -> (x, f, new state): the residual stream [B, T, d_model] before the last
        block's FFN output f (a tensor or PartialSums) is added, for the final norm to add and normalise."""
        B, T = input_ids.shape
        x = scaled_embedding(input_ids, self.embed.weight, math.sqrt(self.config.d_model))
        if self.config.positional == "sinusoidal":
            if position_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            x = x + sinusoidal_positions(position_ids, self.config.d_model).to(x.dtype)
        x = self.drop(x)
        f, new_state = None, []
        for i, block in enumerate(self.blocks):
            x, f, s = block.forward_residual(x, f, None if state is None else state[i], attention_mask, inplace_state)
            if state is None and self.config.state_dtype != "float32":
                s = narrow_state(s, self.state_dtype)  # from an empty context the scan returns its accumulation dtype
            new_state.append(s)
        return x, f, new_state

    def step(self, token_ids: torch.Tensor, state: State, positions: torch.Tensor, inplace_state: bool = False,
             next_token: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, State]:
        """One decoding step. token_ids: [B]; positions: [B] -> logits [B, vocab], new state.

        next_token: an int64 [B] tensor (it may be token_ids) that receives the logits' argmax. At batch 1
        on CUDA with inplace_state and RFA_LM_STEP_KERNEL=1 (opt-in: slower than the default so far), the whole
        step is one kernel (ops/lm_decode_step) where it supports the model; a token outside the vocabulary
        then gives NaN logits, next token -1 and an unchanged state."""
        if inplace_state and state is not None and token_ids.shape[0] == 1 and token_ids.is_cuda:
            weights = self.step_weights()
            logits = None if weights is None else lm_decode_step_(weights, token_ids, positions, state, next_token)
            if logits is not None:
                return logits, state
        x, f, state = self._final_stream(token_ids[:, None], state, positions[:, None], None, inplace_state)
        if next_token is None:
            _, h = residual_norm(x, f, self.ln_f)
            return linear(h[:, 0], self.lm_head.weight, self.lm_head.bias), state
        _, logits = residual_linear_argmax(x, f, self.ln_f, self.lm_head.weight, self.lm_head.bias, next_token)
        return logits[:, 0], state

    def step_weights(self) -> Optional[LMStepWeights]:
        """The parameters as the fused decode step takes them (cached while no parameter changes), or None
        where that step does not apply (training with dropout)."""
        if self.training and self.config.dropout > 0:
            return None
        tensors = list(self.parameters()) + list(self.buffers())
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if getattr(self, "_step_key", None) != key:
            self._step_weights = LMStepWeights(
                n_heads=self.config.n_heads, feature_map=self.config.feature_map, gated=self.config.gated,
                sinusoidal=self.config.positional == "sinusoidal", layer_norm_eps=self.config.layer_norm_eps,
                eps=self.config.normaliser_eps, embed_scale=math.sqrt(self.config.d_model),
                embed=self.embed.weight.detach(), layers=[block.step_weights() for block in self.blocks],
                ln_f_weight=self.ln_f.weight.detach(), ln_f_bias=self.ln_f.bias.detach(),
                lm_head_weight=self.lm_head.weight.detach(),
                lm_head_bias=None if self.lm_head.bias is None else self.lm_head.bias.detach())
            self._step_key = key
        return self._step_weights
