"""The normaliser rule of the contract: out = num / den with a bounded, sign-safe denominator."""

import torch

from ...format.config import DEFAULT_EPS

__all__ = ["DEFAULT_EPS", "bounded_readout"]


def bounded_readout(num: torch.Tensor, den: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Divide the numerator by the clamped normaliser (docs/op_contract.md, "Normaliser").

    den_c = max(den, eps * max_j |num_j|); out = num / den_c, and out = 0 where den_c == 0.

    The clamp only binds when the true ratio would exceed 1/eps in magnitude (or den <= 0), so
    |out| <= 1/eps always, and the rule is invariant to a common scale of num and den.

    Args:
        num: [..., Dv]
        den: [...]
    Returns:
        [..., Dv], dtype of num.
    """
    scale = num.abs().amax(dim=-1)
    den_c = torch.maximum(den, eps * scale)
    safe = torch.where(den_c > 0, den_c, torch.ones_like(den_c))
    return num / safe.unsqueeze(-1)
