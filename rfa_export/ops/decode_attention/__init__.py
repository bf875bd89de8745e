"""One decode step of a causal RFA attention layer (features, gate, scan step): reference and fused kernel;
`decode_attention_step_` (op.py) runs the kernel where it can."""

from .cuda import cuda_decode_attention_step_, decode_attention_kernel_supports
from .naive import naive_decode_attention_step
from .op import decode_attention_step_

__all__ = ["cuda_decode_attention_step_", "decode_attention_kernel_supports", "decode_attention_step_",
           "naive_decode_attention_step"]
