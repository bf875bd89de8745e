"""(x + y, linear(LayerNorm(x + y))) for one row, as one Triton kernel: the residual add and norm before a
linear layer done in that layer's kernel (and the q/k/v projection's feature projections with it).

At one row every program of the decode linear kernel reads its whole weight strip into registers before
waiting for the kernel before it (triton_linear.ONE_ROW_EARLY_READ "strip"), so what is left after the wait
is short: here each program also reads the residual row x, the added term y (a tensor or a split layer's fp32
partial sums with their bias) and forms the sum, its mean and variance and the normalised row itself (a
few KB from L2), instead of a separate add + LayerNorm kernel (ops/add_layer_norm) and its dependent edge.
Program 0 stores the sum, the residual stream's next value. Arithmetic as ops/add_layer_norm's contract: the
sum rounded to x's dtype, statistics in fp32, the normalised row rounded to x's dtype before the GEMM. The
kernel is triton_linear's, with its NORM prologue (triton_linear.RowNorm).
"""

from typing import Optional, Tuple

import torch

from . import triton_linear
from .triton_linear import (RowNorm, _tiles, decode_linear_kernel_supports, strip_columns, triton_decode_linear,
                            triton_decode_linear_argmax, triton_decode_linear_projected)

FUSE_NORM_AT_ONE_ROW = True  # tests and benchmarks/bench_decode_variants_gpu.py compare with it off


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


def _row_norm(x: torch.Tensor, y: Optional[torch.Tensor], y_partials: Optional[torch.Tensor],
              y_bias: Optional[torch.Tensor], ln_weight: torch.Tensor, ln_bias: Optional[torch.Tensor],
              eps: float) -> Tuple[torch.Tensor, RowNorm]:
    """(s, the RowNorm writing x + y into s): s is x itself when there is nothing to add."""
    has_y = y is not None or y_partials is not None
    s = torch.empty_like(x) if has_y else x
    parts = y_partials.shape[0] if y_partials is not None else 0
    return s, RowNorm(y_partials if y_partials is not None else y, parts, y_bias, ln_weight, ln_bias, eps, s)


def triton_residual_norm_linear(x: torch.Tensor, y: Optional[torch.Tensor], y_partials: Optional[torch.Tensor],
                                y_bias: Optional[torch.Tensor], ln_weight: torch.Tensor, ln_bias: Optional[torch.Tensor],
                                eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                gelu: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] (one row), y like x or y_partials [S, ..., K] fp32 (+ y_bias [K]) or neither, ln_weight,
    ln_bias [K], weight [N, K], bias [N] -> (s, out): s = x + y as ops/add_layer_norm stores it (x itself without
    y), out [..., N] = linear(LayerNorm(s), weight, bias), GELU'd when `gelu`; one launch on x's stream. The
    caller has checked residual_norm_linear_supports."""
    s, norm = _row_norm(x, y, y_partials, y_bias, ln_weight, ln_bias, eps)
    return s, triton_decode_linear(x, weight, bias, gelu, norm=norm)


def triton_residual_norm_linear_projected(x: torch.Tensor, y: Optional[torch.Tensor], y_partials: Optional[torch.Tensor],
                                          y_bias: Optional[torch.Tensor], ln_weight: torch.Tensor,
                                          ln_bias: Optional[torch.Tensor], eps: float, weight: torch.Tensor,
                                          bias: Optional[torch.Tensor], sigma: torch.Tensor,
                                          w_tilde: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As triton_residual_norm_linear for the q/k/v projection of a decode step -> (s, out, proj), out and proj
    as triton_decode_linear_projected's for LayerNorm(s). The caller has checked residual_norm_linear_supports
    and decode_linear_projection_parts."""
    s, norm = _row_norm(x, y, y_partials, y_bias, ln_weight, ln_bias, eps)
    return (s, *triton_decode_linear_projected(x, weight, bias, sigma, w_tilde, norm=norm))


def triton_residual_norm_linear_argmax(x: torch.Tensor, y: Optional[torch.Tensor], y_partials: Optional[torch.Tensor],
                                       y_bias: Optional[torch.Tensor], ln_weight: torch.Tensor,
                                       ln_bias: Optional[torch.Tensor], eps: float, weight: torch.Tensor,
                                       bias: Optional[torch.Tensor], out_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """As triton_residual_norm_linear for the LM head of a greedy step -> (s, out), out's argmax written into
    out_index as triton_decode_linear_argmax does. The caller has checked residual_norm_linear_supports and
    triton_linear.argmax_index_fits."""
    s, norm = _row_norm(x, y, y_partials, y_bias, ln_weight, ln_bias, eps)
    return s, triton_decode_linear_argmax(x, weight, bias, out_index, norm=norm)
