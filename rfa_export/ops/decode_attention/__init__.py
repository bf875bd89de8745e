"""One decode step of a causal RFA attention layer (features, gate, scan step): reference and fused kernel."""

from .cuda import cuda_decode_attention_step_, decode_attention_kernel_supports
from .naive import naive_decode_attention_step

__all__ = ["cuda_decode_attention_step_", "decode_attention_kernel_supports", "naive_decode_attention_step"]
