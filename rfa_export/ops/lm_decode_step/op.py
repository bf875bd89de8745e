"""lm_decode_step_: the one entry point of the fused batch-1 decode step of a whole model; None where the
kernel cannot run (the model then composes the step from its layers). Opt-in (RFA_LM_STEP_KERNEL=1): its
GPU tests pass, but it is still slower than the layer-by-layer step (BENCHMARKS.md, the one-kernel B1 step)."""

import os
from typing import List, Optional

import torch

from ..dispatch import native_inference
from .cuda import cuda_lm_decode_step_, lm_step_kernel_supports
from .weights import LMStepWeights


def lm_decode_step_(w: LMStepWeights, token: torch.Tensor, position: torch.Tensor, states: List[torch.Tensor],
                    next_token: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """token, position: int64 [1]; states: per layer [1, H, F, dh + 1] fp32, updated in place -> logits
    [1, vocab] (contract: naive.py), in one kernel on CUDA inference; None where it does not take these
    inputs. next_token: see cuda.py."""
    if os.environ.get("RFA_LM_STEP_KERNEL") != "1":
        return None
    if not native_inference(w.embed, w.embed) or not lm_step_kernel_supports(w, token, position, states):
        return None
    return cuda_lm_decode_step_(w, token, position, states, next_token)
