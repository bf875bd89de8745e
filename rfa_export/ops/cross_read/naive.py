"""The read of an RFA cross-attention state in plain PyTorch: the reference of the fused CUDA kernel."""

import torch

from ..causal_gated_scan.readout import bounded_readout
from ..random_features.naive import naive_random_features


def naive_cross_read(q: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str, state: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """q [N, T, H, dh] queries; state [B_src, H, F, dh + 1] (S | z, fp32, or float64) with N a multiple of B_src,
    the rows of one source contiguous -> out [N, T, H, dh] in q's dtype:
    phi = the random feature map of q (in q's dtype), [num | den] = phi^T [S | z], out = readout(num, den)."""
    N, T, H, dh = q.shape
    Bs, _, F, cols = state.shape
    phi = naive_random_features(q, sigma, w_tilde, kind).to(state.dtype)  # [N, T, H, F]
    o = torch.matmul(phi.reshape(Bs, -1, H, F).transpose(1, 2), state)  # [B_src, H, (N / B_src) T, dh + 1]
    out = bounded_readout(o[..., : cols - 1], o[..., cols - 1], eps)
    return out.transpose(1, 2).reshape(N, T, H, cols - 1).to(q.dtype)
