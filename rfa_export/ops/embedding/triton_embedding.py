"""weight[ids] * scale as one Triton kernel: one program per id.

Decoding one token runs the lookup and the scaling as two PyTorch kernels before the first q/k/v projection,
which as a programmatic dependent launch (ops/decode_linear) can only start once the second has finished. This
kernel lets the next kernel launch at its start, so that kernel reads its weights while the lookup runs.
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the models fall back to the reference
    triton = None

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
USE_PDL = True  # programmatic dependent launch where the device has it; tests compare with it off


if triton is not None:
    @triton.jit
    def _scaled_embedding_kernel(ids_ptr, w_ptr, out_ptr, V, D, scale, PDL: tl.constexpr, BD: tl.constexpr):
        # program i: row i of out, NaN where ids[i] is outside [0, V)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()  # the id may come from the kernel before (the last step's argmax)
        i = tl.program_id(0)
        token = tl.load(ids_ptr + i)
        valid = (token >= 0) & (token < V)
        rd = tl.arange(0, BD)
        d_ok = rd < D
        row = tl.load(w_ptr + tl.where(valid, token, 0) * D + rd, mask=d_ok, other=0.0)
        y = tl.where(valid, row.to(tl.float32) * scale, float("nan"))
        tl.store(out_ptr + i.to(tl.int64) * D + rd, y.to(out_ptr.dtype.element_ty), mask=d_ok)


def scaled_embedding_kernel_supports(ids: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when the kernel takes these inputs: Triton installed, CUDA, ids int64 dense with at least one
    element, weight [V, D] dense of fp32/fp16/bf16 on ids' device, D <= 16384 and V D < 2^31."""
    if triton is None or not ids.is_cuda or ids.dtype != torch.int64 or ids.numel() == 0 or not ids.is_contiguous():
        return False
    if weight.dim() != 2 or weight.dtype not in _DTYPES or weight.device != ids.device or not weight.is_contiguous():
        return False
    return weight.shape[1] <= 16384 and weight.numel() < 2**31


def triton_scaled_embedding(ids: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Same contract as naive_scaled_embedding, on ids' stream, except that an id outside [0, V) gives a row of
    NaN instead of an error (a kernel cannot raise; the logits after it are then NaN). The caller has checked
    scaled_embedding_kernel_supports."""
    V, D = weight.shape
    out = torch.empty((*ids.shape, D), device=weight.device, dtype=weight.dtype)
    pdl = USE_PDL and torch.cuda.get_device_capability(ids.device)[0] >= 9
    BD = max(16, triton.next_power_of_2(D))
    _scaled_embedding_kernel[(ids.numel(),)](ids, weight, out, V, D, float(scale), PDL=pdl, BD=BD,
                                             num_warps=4 if BD <= 2048 else 8, launch_pdl=pdl)
    return out
