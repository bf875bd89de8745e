"""Token embedding rows times a scale (the models' embed(ids) * sqrt(d_model)): plain PyTorch reference and a
Triton kernel; `scaled_embedding` (op.py) chooses between them."""

from .naive import naive_scaled_embedding
from .op import scaled_embedding
from .triton_embedding import scaled_embedding_kernel_supports, triton_scaled_embedding

__all__ = ["naive_scaled_embedding", "scaled_embedding", "scaled_embedding_kernel_supports", "triton_scaled_embedding"]
