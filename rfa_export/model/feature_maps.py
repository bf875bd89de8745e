"""Random feature maps phi(x) of RFA, applied per head to l2-normalised vectors."""

from typing import Optional

import torch
from torch import nn

from ..ops.random_features import random_features
from ..format.feature_maps import FEATURE_MAPS



def draw_random_matrix(
    n_heads: int, num_features: int, head_dim: int, orthogonal: bool, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """W~ of shape [H, D, dh] with N(0, I) rows, or orthogonal random features (rows orthogonal within
    blocks of dh, each row rescaled to the norm of a Gaussian vector so the marginals stay N(0, I))."""
    gauss = torch.randn(n_heads, num_features, head_dim, generator=generator)
    if not orthogonal:
        return gauss
    blocks = []
    for start in range(0, num_features, head_dim):
        rows = min(head_dim, num_features - start)
        square = torch.randn(n_heads, head_dim, head_dim, generator=generator)
        qmat, _ = torch.linalg.qr(square)
        blocks.append(qmat.transpose(-1, -2)[:, :rows])
    ortho = torch.cat(blocks, dim=1)
    norms = torch.linalg.vector_norm(gauss, dim=-1, keepdim=True)
    return ortho * norms


class RandomFeatureMap(nn.Module):
    """phi for one attention layer.

    gaussian: phi(x) = D^-1/2 [sin(W x_hat), cos(W x_hat)], F = 2D  (estimates exp(-|x_hat - y_hat|^2 sigma^2 / 2)).
    arccos:   phi(x) = (2/D)^1/2 relu(W x_hat),             F = D   (the order-1 arc-cosine kernel).
    x_hat = x / |x| per head; W = W~ diag(sigma) with W~ a fixed buffer and sigma learned per head and dimension.
    """

    def __init__(self, kind: str, n_heads: int, head_dim: int, num_features: int, orthogonal: bool = True):
        super().__init__()
        if kind not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {', '.join(FEATURE_MAPS)}, got {kind!r}")
        self.kind = kind
        self.n_heads, self.head_dim, self.num_features = n_heads, head_dim, num_features
        self.orthogonal = orthogonal
        self.sigma = nn.Parameter(torch.ones(n_heads, head_dim))
        self.register_buffer("w_tilde", draw_random_matrix(n_heads, num_features, head_dim, orthogonal))

    @property
    def feature_size(self) -> int:
        return FEATURE_MAPS[self.kind].feature_size(self.num_features)

    @torch.no_grad()
    def resample(self, generator: Optional[torch.Generator] = None) -> None:
        """Draw a new W~ (training); evaluation and export keep the stored one."""
        fresh = draw_random_matrix(self.n_heads, self.num_features, self.head_dim, self.orthogonal, generator)
        self.w_tilde.copy_(fresh.to(self.w_tilde))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H, dh] -> [..., H, F] in x's dtype (ops/random_features)."""
        return random_features(x, self.sigma, self.w_tilde, self.kind)
