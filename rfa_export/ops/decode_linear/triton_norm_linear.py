"""(x + y, linear(LayerNorm(x + y))) for one row, as one Triton kernel: the residual add and norm before a
linear layer done in that layer's kernel.

At one row every program of the decode linear kernel reads its whole weight strip into registers before
waiting for the kernel before it (triton_linear.ONE_ROW_EARLY_READ "strip"), so what is left after the wait
is short: here each program also reads the residual row x, the added term y (a tensor or a split layer's fp32
partial sums with their bias) and forms the sum, its mean and variance and the normalised row itself (a
few KB from L2), instead of a separate add + LayerNorm kernel (ops/add_layer_norm) and its dependent edge.
Program 0 stores the sum, the residual stream's next value. Arithmetic as ops/add_layer_norm's contract: the
sum rounded to x's dtype, statistics in fp32, the normalised row rounded to x's dtype before the GEMM.
"""

from typing import Optional, Tuple

import torch

from . import triton_linear
from .triton_linear import _pdl_capable, _tiles, decode_linear_kernel_supports, strip_columns, strip_num_warps, triton

FUSE_NORM_AT_ONE_ROW = True  # tests and benchmarks/bench_decode_variants_gpu.py compare with it off

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _residual_norm_linear_kernel(x_ptr, y_ptr, y_bias_ptr, ln_w_ptr, ln_b_ptr, sum_ptr, w_ptr, b_ptr, out_ptr,
                                     N, K, eps, Y_PARTS: tl.constexpr, HAS_Y: tl.constexpr, HAS_Y_BIAS: tl.constexpr,
                                     HAS_LN_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
                                     PDL: tl.constexpr, BN: tl.constexpr, KW: tl.constexpr):
        # program i: output columns [i BN, (i + 1) BN) over the whole K (KW >= K); Y_PARTS > 0: y is that many
        # fp32 partial sums [Y_PARTS, K], else a row of x's dtype
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rk = tl.arange(0, KW)
        n_ok = rn < N
        k_ok = rk < K
        # nothing here is an earlier kernel's output: read before the wait
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        gamma = tl.load(ln_w_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
        if HAS_LN_BIAS:
            beta = tl.load(ln_b_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
        if HAS_Y_BIAS:
            y_bias = tl.load(y_bias_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        x = tl.load(x_ptr + rk, mask=k_ok, other=0.0)
        s = x.to(tl.float32)
        if HAS_Y:
            if Y_PARTS > 0:
                y = tl.load(y_ptr + rk, mask=k_ok, other=0.0)
                for p in tl.static_range(1, Y_PARTS):
                    y += tl.load(y_ptr + p * K + rk, mask=k_ok, other=0.0)
                if HAS_Y_BIAS:
                    y += y_bias
                y = y.to(x.dtype)  # rounded once, as the split layer's output would be
            else:
                y = tl.load(y_ptr + rk, mask=k_ok, other=0.0)
            s = (s + y.to(tl.float32)).to(x.dtype).to(tl.float32)
            if tl.program_id(0) == 0:
                tl.store(sum_ptr + rk, s.to(x.dtype), mask=k_ok)
        mean = tl.sum(s, axis=0) / K
        diff = tl.where(k_ok, s - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / K + eps)
        h = diff * rstd * gamma
        if HAS_LN_BIAS:
            h += beta
        h = h.to(x.dtype).to(tl.float32)  # the norm's output as the separate kernel would store it
        acc = tl.sum(w.to(tl.float32) * h[None, :], axis=1)
        if HAS_BIAS:
            acc += bias
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        tl.store(out_ptr + rn, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def _strip(weight: torch.Tensor) -> Tuple[int, int]:
    """(BN, KW): the decode linear kernel's column tile for this weight at one row and the strip's width (0
    where the strip does not fit in registers)."""
    N, K = weight.shape
    BN = _tiles(N, K)[0]
    return BN, strip_columns(1, BN, K)


def residual_norm_linear_supports(x: torch.Tensor, y: Optional[torch.Tensor], y_partials: Optional[torch.Tensor],
                                  y_bias: Optional[torch.Tensor], ln_weight: torch.Tensor, ln_bias: Optional[torch.Tensor],
                                  weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """True when triton_residual_norm_linear takes these inputs: FUSE_NORM_AT_ONE_ROW, one row x [..., K] that
    decode_linear_kernel_supports takes with weight and bias, whose strips read whole (strip_columns); y dense like
    x, or y_partials fp32 [S, ..., K] dense (S <= triton_linear.SPLIT_K_MAX) with y_bias [K] of x's dtype or None,
    or neither; ln_weight and ln_bias [K] dense of x's dtype."""
    if not FUSE_NORM_AT_ONE_ROW or not decode_linear_kernel_supports(x, weight, bias):
        return False
    K = x.shape[-1]
    if x.numel() != K or _strip(weight)[1] == 0:
        return False
    for t in (ln_weight, ln_bias, y_bias):
        if t is not None and (t.shape != (K,) or t.dtype != x.dtype or t.device != x.device or not t.is_contiguous()):
            return False
    if y is not None and (y_partials is not None or y.shape != x.shape or y.dtype != x.dtype or y.device != x.device
                          or not y.is_contiguous()):
        return False
    if y_partials is not None:
        if (y_partials.dtype != torch.float32 or y_partials.device != x.device or not y_partials.is_contiguous()
                or y_partials.shape[1:] != x.shape or not 1 <= y_partials.shape[0] <= triton_linear.SPLIT_K_MAX):
            return False
    elif y_bias is not None:
        return False
    return True


def triton_residual_norm_linear(x: torch.Tensor, y: Optional[torch.Tensor], y_partials: Optional[torch.Tensor],
                                y_bias: Optional[torch.Tensor], ln_weight: torch.Tensor, ln_bias: Optional[torch.Tensor],
                                eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                gelu: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (one row), y like x or y_partials [S, ..., K] fp32 (+ y_bias [K]) or neither, ln_weight,
    ln_bias [K], weight [N, K], bias [N] -> (s, out): s = x + y as ops/add_layer_norm stores it (x itself without
    y), out [..., N] = linear(LayerNorm(s), weight, bias), GELU'd when `gelu`; one launch on x's stream. The
    caller has checked residual_norm_linear_supports."""
    N, K = weight.shape
    BN, KW = _strip(weight)
    has_y = y is not None or y_partials is not None
    s = torch.empty_like(x) if has_y else x
    out = torch.empty((*x.shape[:-1], N), device=x.device, dtype=x.dtype)
    pdl = triton_linear.USE_PDL and _pdl_capable(x.device)
    y_src = y_partials if y_partials is not None else y if y is not None else x
    _residual_norm_linear_kernel[(triton.cdiv(N, BN),)](
        x, y_src, y_bias if y_bias is not None else x, ln_weight, ln_bias if ln_bias is not None else ln_weight, s,
        weight, bias if bias is not None else weight, out, N, K, eps,
        Y_PARTS=y_partials.shape[0] if y_partials is not None else 0, HAS_Y=has_y, HAS_Y_BIAS=y_bias is not None,
        HAS_LN_BIAS=ln_bias is not None, HAS_BIAS=bias is not None, GELU=gelu, PDL=pdl, BN=BN, KW=KW,
        num_warps=strip_num_warps(BN, KW), launch_pdl=pdl)
    return s, out
