"""One decode step of a causal RFA layer in plain PyTorch: the reference of the fused CUDA kernel, and the
same composition CausalRFASelfAttention.forward runs for T = 1."""

from typing import Optional, Tuple

import torch

from ..causal_gated_scan import DEFAULT_EPS, naive_causal_gated_scan
from ..random_features import naive_random_features


def naive_decode_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: Optional[torch.Tensor],
    sigma: torch.Tensor,
    w_tilde: torch.Tensor,
    kind: str,
    state: Optional[torch.Tensor],
    eps: float = DEFAULT_EPS,
    keep: Optional[torch.Tensor] = None,
    round_to: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Args:
        q, k, v: [B, H, dh] projections of one step; gate_logits: [B, H] or None (ungated);
        sigma: [H, dh]; w_tilde: [H, D, dh]; kind: "gaussian" (F = 2D) or "arccos" (F = D);
        state: [B, H, F, dh + 1] or None (zeros), not modified;
        keep: [B], 0 where the step must leave that entry's state unchanged (a padding step), or None;
        round_to: round the features and the gate to this dtype before the scan, as the model does in its
            own dtype (for a float64 reference of a half-precision model); None: no rounding.
    Returns:
        out [B, H, dh] in v's dtype, new state [B, H, F, dh + 1].
    """
    phi_q = naive_random_features(q, sigma, w_tilde, kind)
    phi_k = naive_random_features(k, sigma, w_tilde, kind)
    g = torch.sigmoid(gate_logits) if gate_logits is not None else None
    if round_to is not None:
        phi_q, phi_k = (t.to(round_to).to(q.dtype) for t in (phi_q, phi_k))
        g = None if g is None else g.to(round_to).to(q.dtype)
    if keep is not None:
        kept = (keep != 0).to(q.dtype)[:, None]  # [B, 1]
        phi_k = phi_k * kept[..., None]
        if g is not None:
            g = g * kept + (1.0 - kept)
    out, new_state = naive_causal_gated_scan(
        phi_q[:, None], phi_k[:, None], v[:, None], None if g is None else g[:, None], state, eps)
    return out[:, 0], new_state
