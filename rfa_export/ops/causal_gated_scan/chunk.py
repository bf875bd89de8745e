"""Chunked rfa::CausalGatedScan in plain torch: matmuls inside chunks, a short recurrence across them."""

from typing import Optional, Tuple

import torch

from .naive import accumulation_dtype, final_state_dtype
from .readout import DEFAULT_EPS, bounded_readout
from .state_storage import narrow_state, widen_state

DEFAULT_CHUNK_SIZE = 64


def segment_log_decay(log_g: torch.Tensor) -> torch.Tensor:
    """L[..., t, i] = sum_{j=i+1..t} log_g[..., j] for i <= t, -inf above the diagonal.

    Built as a masked cumulative sum rather than as a difference of prefix sums, so that a very
    small gate early in a chunk cannot cancel catastrophically against later terms.

    Args:
        log_g: [..., C], entries <= 0 (may be -inf for a gate of exactly 0).
    Returns:
        [..., C, C]
    """
    C = log_g.shape[-1]
    x = log_g.unsqueeze(-1).expand(*log_g.shape, C)  # x[..., j, i] = log_g[..., j]
    ones = torch.ones(C, C, dtype=torch.bool, device=log_g.device)
    x = x.masked_fill(~torch.tril(ones, diagonal=-1), 0.0)  # keep j > i
    seg = torch.cumsum(x, dim=-2)
    return seg.masked_fill(~torch.tril(ones), float("-inf"))


def chunk_causal_gated_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    eps: float = DEFAULT_EPS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same contract as naive_causal_gated_scan, computed chunk by chunk.

    With value' = [v, 1] and key' = (1 - g) k the state [S | z] is one matrix, and a chunk of C steps is
    out'_t = exp(b_t) q_t^T S_0 + sum_{i<=t} exp(L[t, i]) (q_t . key'_i) value'_i   (b_t = sum_{j<=t} log g_j)
    S_C    = exp(b_C) S_0 + sum_i exp(L[C, i]) key'_i value'_i^T.

    Args:
        q, k: [B, T, H, F]; v: [B, T, H, Dv]; g: [B, T, H] or None;
        initial_state: [B, H, F, Dv + 1] ([B, H, F, Dv + 2] int8) or None.
    Returns:
        out [B, T, H, Dv] in v's dtype, final_state in initial_state's dtype and layout (the accumulation
        dtype, [B, H, F, Dv + 1], when None).
    """
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    acc = accumulation_dtype(q.dtype)
    state_dtype = final_state_dtype(q.dtype, initial_state)
    if initial_state is None:
        state = q.new_zeros((B, H, F, Dv + 1), dtype=acc)
    else:
        state = widen_state(initial_state, Dv, acc)
    if T == 0:
        kept = initial_state if initial_state is not None else state
        return v.new_zeros((B, 0, H, Dv)), kept.clone()

    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T

    qh = q.to(acc).transpose(1, 2)  # [B, H, T, F]
    kh = k.to(acc).transpose(1, 2)
    vh = v.to(acc).transpose(1, 2)
    vh = torch.cat([vh, vh.new_ones((B, H, T, 1))], dim=-1)  # value' = [v, 1]
    if g is not None:
        gh = g.to(acc).transpose(1, 2)  # [B, H, T]
        kh = kh * (1 - gh).unsqueeze(-1)
        log_g = torch.log(gh)
    else:
        log_g = qh.new_zeros((B, H, T))
    if pad:
        # Padding steps have gate 1 and zero key/value: they leave the state unchanged.
        qh = torch.nn.functional.pad(qh, (0, 0, 0, pad))
        kh = torch.nn.functional.pad(kh, (0, 0, 0, pad))
        vh = torch.nn.functional.pad(vh, (0, 0, 0, pad))
        log_g = torch.nn.functional.pad(log_g, (0, pad))

    qc = qh.reshape(B, H, N, C, F)
    kc = kh.reshape(B, H, N, C, F)
    vc = vh.reshape(B, H, N, C, Dv + 1)
    a = log_g.reshape(B, H, N, C)

    seg = segment_log_decay(a)  # [B, H, N, C, C]
    scores = (qc @ kc.transpose(-1, -2)) * torch.exp(seg)
    out = scores @ vc  # intra-chunk part, [B, H, N, C, Dv + 1]

    to_end = torch.exp(seg[..., -1, :])  # decay from step i to the chunk's end, [B, H, N, C]
    chunk_updates = (kc * to_end.unsqueeze(-1)).transpose(-1, -2) @ vc  # [B, H, N, F, Dv + 1]
    from_start = torch.exp(torch.cumsum(a, dim=-1))  # decay from the chunk's start to step t
    chunk_decay = from_start[..., -1]  # [B, H, N]

    inter = []
    for n in range(N):
        inter.append((qc[:, :, n] * from_start[:, :, n].unsqueeze(-1)) @ state)
        state = chunk_decay[:, :, n, None, None] * state + chunk_updates[:, :, n]
    out = out + torch.stack(inter, dim=2)

    out = out.reshape(B, H, N * C, Dv + 1)[:, :, :T]
    out = bounded_readout(out[..., :Dv], out[..., Dv], eps)
    return out.transpose(1, 2).to(v.dtype), narrow_state(state, state_dtype)
