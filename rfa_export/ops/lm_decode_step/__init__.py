"""The batch-1 decode step of a whole RFA language model (embedding to logits and argmax): reference and one
persistent kernel; `lm_decode_step_` (op.py) runs the kernel where it can."""

from .cuda import cuda_lm_decode_step_, lm_step_kernel_supports
from .naive import naive_lm_decode_step
from .op import lm_decode_step_
from .weights import LayerWeights, LMStepWeights

__all__ = ["LMStepWeights", "LayerWeights", "cuda_lm_decode_step_", "lm_decode_step_", "lm_step_kernel_supports",
           "naive_lm_decode_step"]
