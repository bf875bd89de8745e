"""One batch-1 decode step of a whole RFA language model in plain PyTorch: the reference of the fused kernel."""

from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..decode_attention import naive_decode_attention_step
from ..positions import sinusoidal_positions
from .weights import LMStepWeights


def naive_lm_decode_step(w: LMStepWeights, token: torch.Tensor, position: torch.Tensor,
                         states: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """
    Args:
        w: the model's parameters; computed in float64 when they are float64, else in fp32;
        token: [1] int64 (in the vocabulary); position: [1] int64;
        states: per layer [1, H, F, dh + 1] (S | z), not modified.
    Returns:
        logits [1, vocab] in the weights' dtype, the new states [1, H, F, dh + 1] in the compute dtype.
    """
    compute = torch.float64 if w.embed.dtype == torch.float64 else torch.float32

    def c(t):
        return None if t is None else t.to(compute)

    d = w.embed.shape[1]
    H = w.n_heads
    x = c(w.embed[token]) * w.embed_scale  # [1, d]
    if w.sinusoidal:
        x = x + sinusoidal_positions(position[:, None], d)[:, 0].to(compute)
    new_states = []
    for layer, state in zip(w.layers, states):
        h = F.layer_norm(x, (d,), c(layer.ln_attn_weight), c(layer.ln_attn_bias), w.layer_norm_eps)
        y = F.linear(h, c(layer.qkvg_weight), c(layer.qkvg_bias))
        q, k, v = (y[:, i * d : (i + 1) * d].unflatten(-1, (H, d // H)) for i in range(3))
        gate_logits = y[:, 3 * d :] if w.gated else None
        out, state = naive_decode_attention_step(q, k, v, gate_logits, c(layer.sigma), c(layer.w_tilde), w.feature_map,
                                                 c(state), w.eps)
        new_states.append(state)
        x = x + F.linear(out.flatten(-2), c(layer.o_weight), c(layer.o_bias))
        h = F.layer_norm(x, (d,), c(layer.ln_ffn_weight), c(layer.ln_ffn_bias), w.layer_norm_eps)
        x = x + F.linear(F.gelu(F.linear(h, c(layer.ffn1_weight), c(layer.ffn1_bias))), c(layer.ffn2_weight),
                         c(layer.ffn2_bias))
    h = F.layer_norm(x, (d,), c(w.ln_f_weight), c(w.ln_f_bias), w.layer_norm_eps)
    logits = F.linear(h, c(w.lm_head_weight), c(w.lm_head_bias))
    return logits.to(w.embed.dtype), new_states
