"""decode_attention_step_: the one entry point of the fused decode step; None where the kernel cannot run
(the caller then composes the step from random_features and causal_gated_scan_)."""

from typing import Optional

import torch

from ..dispatch import native_inference
from .cuda import cuda_decode_attention_step_, decode_attention_kernel_supports


def decode_attention_step_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate_logits: Optional[torch.Tensor],
                           sigma: torch.Tensor, w_tilde: torch.Tensor, kind: str, state: torch.Tensor, eps: float,
                           keep: Optional[torch.Tensor] = None, overlap_state_load: bool = False,
                           proj: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """q, k, v [B, H, dh], gate_logits [B, H] or None, state [B, H, F, dh + 1] updated in place -> out
    [B, H, dh] (contract: naive.py), in one kernel on CUDA inference; None where that kernel does not take
    these inputs. overlap_state_load and proj: see cuda.py."""
    if not native_inference(q, sigma) or not decode_attention_kernel_supports(q, k, v, gate_logits, sigma, w_tilde,
                                                                            kind, state, keep):
        return None
    return cuda_decode_attention_step_(q, k, v, gate_logits, sigma, w_tilde, kind, state, eps, keep,
                                       overlap_state_load=overlap_state_load, proj=proj)
