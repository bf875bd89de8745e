"""Reading an RFA cross-attention state: plain PyTorch reference and the fused CUDA kernel; `cross_read`
(op.py) chooses between them."""

from .cuda import cross_read_kernel_supports, cuda_cross_read
from .naive import naive_cross_read
from .op import cross_read

__all__ = ["cross_read", "cross_read_kernel_supports", "cuda_cross_read", "naive_cross_read"]
