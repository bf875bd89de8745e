"""The random feature map phi in plain PyTorch: the reference of the fused CUDA kernel."""

import torch

from ...format.feature_maps import feature_map


def naive_random_features(x: torch.Tensor, sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str) -> torch.Tensor:
    """phi(x) per head, computed in fp32 (float64 for float64 inputs), returned in x's dtype.

    x: [..., H, dh]; sigma: [H, dh]; w_tilde: [H, D, dh] -> [..., H, F], F = 2D (gaussian) or D (arccos);
    the map itself is the registered one (rfa_export/format/feature_maps.py);
    x_hat = x / max(|x|, 1e-6), W = W~ diag(sigma).
    """
    H, D, dh = w_tilde.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    x_hat = xc / torch.linalg.vector_norm(xc, dim=-1, keepdim=True).clamp_min(1e-6)
    w = w_tilde.to(compute).transpose(-1, -2)  # [H, dh, D]
    # One batched matmul over heads: [H, N, dh] @ [H, dh, D]. A broadcast matmul against w would
    # materialise w once per row (34 MB per call at batch 64 in decoding).
    lead = x_hat.shape[:-2]
    rows = (x_hat * sigma.to(compute)).reshape(-1, H, dh).transpose(0, 1)
    proj = torch.bmm(rows, w).transpose(0, 1).reshape(*lead, H, D)
    phi = feature_map(kind).apply(proj)
    return phi.to(x.dtype)
