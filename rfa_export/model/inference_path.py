"""When the model may take its CUDA inference shortcuts (fused projections, fused random features)."""

import torch
from torch import nn


def cuda_inference(x: torch.Tensor, *modules: nn.Module) -> bool:
    """True for CUDA inputs outside autograd and outside graph tracing (torch.compile / torch.export, which
    the ONNX exporter uses): the shortcuts call native kernels through ctypes and cache tensors on the
    module, neither of which a tracer can follow."""
    if not x.is_cuda or torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    return not (x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters()))
