"""When an op may take its native path (CUDA kernels, Triton), decided in one place for every op."""

from typing import Optional

import torch


def native_inference(x: torch.Tensor, *tensors: Optional[torch.Tensor]) -> bool:
    """True for CUDA inputs outside autograd and outside graph tracing (torch.compile / torch.export, which
    the ONNX exporter uses): the native paths are called through ctypes or Triton and may cache tensors,
    neither of which a tracer or autograd can follow. `tensors`: the op's parameters (weights)."""
    if not x.is_cuda or torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    return not (x.requires_grad or any(t is not None and t.requires_grad for t in tensors))
