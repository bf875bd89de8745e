"""Sequential reference of rfa::CausalGatedScan: one step at a time, S and z kept apart."""

from typing import Optional, Tuple

import torch

from .readout import DEFAULT_EPS, bounded_readout
from .state_storage import narrow_state, widen_state


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """State/accumulation dtype: float64 for float64 inputs (testing), float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def final_state_dtype(dtype: torch.dtype, initial_state: Optional[torch.Tensor]) -> torch.dtype:
    """The dtype of final_state: initial_state's (fp32 or a reduced-precision storage dtype), the
    accumulation dtype when there is none."""
    return accumulation_dtype(dtype) if initial_state is None else initial_state.dtype


def naive_causal_gated_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    eps: float = DEFAULT_EPS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plain per-step recurrence, the reference every fast path is tested against.

    Args:
        q: [B, T, H, F] query features.
        k: [B, T, H, F] key features.
        v: [B, T, H, Dv] values.
        g: [B, T, H] gate in [0, 1], or None (ungated).
        initial_state: [B, H, F, Dv + 1] (S in the first Dv columns, z in the last), or None (zeros); an int8
            state is [B, H, F, Dv + 2] (state_storage.py).
        eps: normaliser constant.
    Returns:
        out [B, T, H, Dv] in v's dtype, final_state in initial_state's dtype and layout (the accumulation
        dtype, [B, H, F, Dv + 1], when None): widened on entry, rounded once on return.
    """
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    acc = accumulation_dtype(q.dtype)
    if initial_state is None:
        S = q.new_zeros((B, H, F, Dv), dtype=acc)
        z = q.new_zeros((B, H, F), dtype=acc)
    else:
        wide = widen_state(initial_state, Dv, acc)
        S = wide[..., :Dv].clone()
        z = wide[..., Dv].clone()
    outs = []
    for t in range(T):
        qt, kt, vt = q[:, t].to(acc), k[:, t].to(acc), v[:, t].to(acc)
        kv = kt.unsqueeze(-1) * vt.unsqueeze(-2)
        if g is None:
            S = S + kv
            z = z + kt
        else:
            gt = g[:, t].to(acc)
            S = gt[..., None, None] * S + (1 - gt)[..., None, None] * kv
            z = gt[..., None] * z + (1 - gt)[..., None] * kt
        num = torch.einsum("bhf,bhfd->bhd", qt, S)
        den = torch.einsum("bhf,bhf->bh", qt, z)
        outs.append(bounded_readout(num, den, eps))
    out = torch.stack(outs, dim=1) if outs else v.new_zeros((B, 0, H, Dv), dtype=acc)
    final_state = torch.cat([S, z.unsqueeze(-1)], dim=-1)
    return out.to(v.dtype), narrow_state(final_state, final_state_dtype(q.dtype, initial_state))
