"""y = x W^T + b (+ exact GELU) for at most 64 rows, as one Triton kernel.

Decoding runs each linear layer on a handful of rows: cuBLAS then spends more time in launch, ramp-up and
a separate split-K reduction (and a separate GELU) than in reading the weights. This kernel gives each
program a strip of output columns over all rows and the whole K, with the bias and GELU in the epilogue.
On Hopper it is a programmatic dependent launch (plugins/kernels/dependent_launch.cuh says what that is):
it may start while the kernel before it finishes, reading its bias before waiting for that kernel.
"""

from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the model falls back to F.linear
    triton = None

MAX_ROWS = 64
_DTYPES = (torch.float16, torch.bfloat16)
# benchmarks switch it off to measure what it brings
USE_PDL = True

if triton is not None:
    @triton.jit
    def _decode_linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K,
                              HAS_BIAS: tl.constexpr, GELU: tl.constexpr, PDL: tl.constexpr,
                              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rm = tl.arange(0, BM)
        n_ok = rn < N
        if HAS_BIAS:
            bias = tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        if PDL:
            tl.extra.cuda.gdc_wait()
            # at once: triggered after the K loop instead, the model's decode step took 5-9% longer (H200)
            tl.extra.cuda.gdc_launch_dependents()
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            k_ok = rk < K
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(x, tl.trans(w))
        if HAS_BIAS:
            acc += bias[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & n_ok[None, :])


def _pdl_capable(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def decode_linear_kernel_supports(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """True when the kernel takes these inputs: Triton installed, CUDA (compute capability >= 8), fp16 or
    bf16 throughout, x [..., K] dense with at most 64 rows, weight [N, K] dense (under 2^31 elements), bias
    [N] or None."""
    if triton is None or not x.is_cuda or x.dtype not in _DTYPES or x.dim() < 1 or x.numel() == 0:
        return False
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1] or weight.dtype != x.dtype or weight.device != x.device:
        return False
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype or not bias.is_contiguous()):
        return False
    if not (x.is_contiguous() and weight.is_contiguous()) or x.numel() // x.shape[-1] > MAX_ROWS:
        return False
    if weight.numel() >= 2**31 or MAX_ROWS * weight.shape[0] >= 2**31:  # the kernel's offsets are 32-bit
        return False
    return torch.cuda.get_device_capability(x.device)[0] >= 8


def _tiles(N: int, K: int):
    """(BN, BK, num_stages), tuned on the H200 for 1-64 rows and the widths of a d_model 1024 decoder."""
    BN = 16 if N <= 1024 else 32 if N <= 8192 else 64
    BK = 256 if K >= 4096 else 128
    return BN, min(BK, max(16, triton.next_power_of_2(K))), 3 if BN == 64 else 4


def triton_decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         gelu: bool = False) -> torch.Tensor:
    """Same contract as naive_decode_linear (fp32 accumulation, one rounding), on x's stream; the caller
    has checked decode_linear_kernel_supports."""
    N, K = weight.shape
    M = x.numel() // K
    y = torch.empty((*x.shape[:-1], N), device=x.device, dtype=x.dtype)
    BN, BK, stages = _tiles(N, K)
    pdl = USE_PDL and _pdl_capable(x.device)
    _decode_linear_kernel[(triton.cdiv(N, BN),)](
        x, weight, bias if bias is not None else weight, y, M, N, K,
        HAS_BIAS=bias is not None, GELU=gelu, PDL=pdl, BM=max(16, triton.next_power_of_2(M)), BN=BN, BK=BK,
        num_warps=4, num_stages=stages, launch_pdl=pdl)
    return y
