"""The torch custom op rfa::causal_gated_scan: traceable, exportable, differentiable."""

from typing import Optional, Tuple

import torch

from .chunk import chunk_causal_gated_scan
from .cuda import cuda_causal_gated_scan, kernel_supports
from .naive import final_state_dtype
from .readout import DEFAULT_EPS
from .state_storage import state_columns
from .validate import check_scan_inputs


@torch.library.custom_op("rfa::causal_gated_scan", mutates_args=())
def causal_gated_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    eps: float = DEFAULT_EPS,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """rfa::CausalGatedScan (docs/op_contract.md).

    Args:
        q: [B, T, H, F] query features; k: [B, T, H, F] key features; v: [B, T, H, Dv];
        g: [B, T, H] gate or None; initial_state: [B, H, F, Dv + 1] fp32 or bf16, [B, H, F, Dv + 2] int8,
        or None.
    Returns:
        out [B, T, H, Dv] in v's dtype, final_state in initial_state's dtype and shape (fp32 [B, H, F, Dv + 1]
        if None).
    """
    check_scan_inputs(q, k, v, g, initial_state)
    if q.is_cuda and q.shape[1] > 0 and kernel_supports(q, v, initial_state):
        return cuda_causal_gated_scan(q, k, v, g, initial_state, eps)
    out, state = chunk_causal_gated_scan(q, k, v, g, initial_state, eps)
    if initial_state is not None and state.data_ptr() == initial_state.data_ptr():
        state = state.clone()
    return out, state


@causal_gated_scan.register_fake
def _(q, k, v, g=None, initial_state=None, eps=DEFAULT_EPS):
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    out = v.new_empty((B, T, H, Dv))
    dtype = final_state_dtype(q.dtype, initial_state)
    state = q.new_empty((B, H, F, state_columns(Dv, dtype)), dtype=dtype)
    return out, state


def _setup_context(ctx, inputs, output):
    q, k, v, g, initial_state, eps = inputs
    ctx.save_for_backward(q, k, v, g, initial_state)
    ctx.eps = eps


def _backward(ctx, grad_out, grad_state):
    # Recompute through the differentiable plain-torch path; training-only, so simplicity wins.
    saved = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in saved]
        out, state = chunk_causal_gated_scan(*leaves, eps=ctx.eps)
        outputs, grads = [], []
        for o, go in ((out, grad_out), (state, grad_state)):
            if go is not None:
                outputs.append(o)
                grads.append(go)
        wanted = [x for x, need in zip(leaves, ctx.needs_input_grad[:5]) if need and x is not None]
        got = torch.autograd.grad(outputs, wanted, grads, allow_unused=True) if wanted else []
    it = iter(got)
    result = []
    for x, need in zip(leaves, ctx.needs_input_grad[:5]):
        result.append(next(it) if need and x is not None else None)
    return (*result, None)


causal_gated_scan.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("rfa::causal_gated_scan_", mutates_args=("state",))
def causal_gated_scan_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor],
    state: torch.Tensor,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """In-place variant for decoding loops: `state` (fp32, bf16 or int8 rows) is read as the initial state
    and overwritten with the final one (the CUDA kernels alias input and output; elsewhere a copy). Returns out."""
    check_scan_inputs(q, k, v, g, state)
    if q.is_cuda and q.shape[1] > 0 and kernel_supports(q, v, state):
        out, _ = cuda_causal_gated_scan(q, k, v, g, state, eps, out_state=state)
        return out
    out, new = chunk_causal_gated_scan(q, k, v, g, state, eps)
    state.copy_(new)
    return out


@causal_gated_scan_.register_fake
def _(q, k, v, g, state, eps=DEFAULT_EPS):
    return v.new_empty((*q.shape[:3], v.shape[-1]))
