"""scaled_embedding: the one entry point of the models' token embedding; it picks the kernel or the reference."""

import torch

from ..dispatch import native_inference
from .naive import naive_scaled_embedding
from .triton_embedding import scaled_embedding_kernel_supports, triton_scaled_embedding


def scaled_embedding(ids: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """weight[ids] * scale (contract: naive.py). CUDA inference where the kernel takes the inputs: one launch,
    which lets the kernel after it start early (decoding one token is bound by kernel count); an id outside the
    vocabulary then gives a row of NaN. Otherwise plain PyTorch."""
    if native_inference(ids, weight) and scaled_embedding_kernel_supports(ids, weight):
        return triton_scaled_embedding(ids, weight, scale)
    return naive_scaled_embedding(ids, weight, scale)
