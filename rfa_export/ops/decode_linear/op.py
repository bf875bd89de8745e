"""linear, linear_argmax, linear_projecting_features and, with the residual norm before them,
linear_after_residual_norm, linear_projecting_features_after_residual_norm and linear_argmax_after_residual_norm:
the entry points of the linear layers; they pick the decode-sized Triton kernels or F.linear."""

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch.nn import functional as F

from ..dispatch import native_inference
from .triton_linear import (argmax_index_fits, decode_linear_kernel_supports, decode_linear_projection_parts,
                            decode_linear_splits, triton_decode_linear, triton_decode_linear_argmax,
                            triton_decode_linear_partials, triton_decode_linear_projected)
from .triton_norm_linear import (residual_norm_linear_supports, triton_residual_norm_linear,
                                 triton_residual_norm_linear_argmax, triton_residual_norm_linear_projected)


class PartialSums(NamedTuple):
    """A linear layer's output left as fp32 partial sums over its inner dimension, [S, ..., N], with its
    bias [N] (or None) and the dtype the output would have: the residual norm that reads it adds them up."""

    partials: torch.Tensor
    bias: Optional[torch.Tensor]
    dtype: torch.dtype

    def total(self) -> torch.Tensor:
        y = self.partials.sum(0)
        return (y if self.bias is None else y + self.bias.float()).to(self.dtype)


def _decode_path(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return native_inference(x, weight, bias) and decode_linear_kernel_supports(x, weight, bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: bool = False,
           partial_sums: bool = False) -> Union[torch.Tensor, PartialSums]:
    """F.linear(x, weight, bias), then the exact GELU when `gelu`.

    On the CUDA inference path with at most 64 rows (a decoding step) this is one Triton kernel
    (triton_linear.py): the GEMM, the bias and the GELU together, launched so that it may start
    while the kernel before it finishes.
    partial_sums: the caller takes PartialSums (residual_norm does). On the decode path a layer with a deep
    inner dimension for its few output column strips then runs split over it (decode_linear_splits), and
    the residual norm that follows adds its partial sums up instead of a reduction kernel of their own.
    """
    if not _decode_path(x, weight, bias):
        y = F.linear(x, weight, bias)
        return F.gelu(y) if gelu else y
    if partial_sums and not gelu:
        splits = decode_linear_splits(weight)
        if splits > 1:
            return PartialSums(triton_decode_linear_partials(x, weight, splits), bias, x.dtype)
    return triton_decode_linear(x, weight, bias, gelu)


def linear_argmax(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  out_index: torch.Tensor) -> torch.Tensor:
    """linear(x, weight, bias), with its argmax over the last dimension written into out_index (int64,
    x.shape[:-1]; greedy decoding's next token). On the decode path the argmax comes out of the linear
    layer's kernel and one small kernel after it (triton_decode_linear_argmax; NaN counts as +inf there),
    not a reduction over the stored output."""
    if _decode_path(x, weight, bias) and argmax_index_fits(x, out_index):
        return triton_decode_linear_argmax(x, weight, bias, out_index)
    y = linear(x, weight, bias)
    out_index.copy_(y.argmax(-1))
    return y


def linear_projecting_features(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], sigma: torch.Tensor,
                               w_tilde: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(linear(x, weight, bias), proj): the fused q/k/v projection of a decoding step, which on the one-kernel
    path also projects q and k for their random features (triton_decode_linear_projected:
    the decode step kernel then skips that work); proj is None where that path does not take the inputs."""
    if _decode_path(x, weight, bias) and decode_linear_projection_parts(x, weight, sigma, w_tilde):
        return triton_decode_linear_projected(x, weight, bias, sigma, w_tilde)
    return linear(x, weight, bias), None


def _fused_norm_inputs(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], ln_weight: torch.Tensor,
                       ln_bias: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """(y as a tensor, y's partial sums, their bias) where the decode path runs the residual norm inside the
    linear layer's kernel (triton_norm_linear.residual_norm_linear_supports), else None."""
    partial = y if isinstance(y, PartialSums) else None
    if partial is not None and partial.dtype != x.dtype:
        return None
    # residual_norm_linear_supports includes decode_linear_kernel_supports, the other half of _decode_path
    if ln_weight is None or not native_inference(x, weight, bias, ln_weight, ln_bias):
        return None
    y_tensor = None if partial is not None else y
    y_partials, y_bias = (partial.partials, partial.bias) if partial is not None else (None, None)
    if not residual_norm_linear_supports(x, y_tensor, y_partials, y_bias, ln_weight, ln_bias, weight, bias):
        return None
    return y_tensor, y_partials, y_bias


def linear_after_residual_norm(x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], ln_weight: torch.Tensor,
                               ln_bias: Optional[torch.Tensor], eps: float, weight: torch.Tensor,
                               bias: Optional[torch.Tensor], gelu: bool = False) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(x + y, linear(LayerNorm(x + y), weight, bias, gelu)) as one kernel where the decode path takes the
    inputs (one row on CUDA: triton_norm_linear.py; y a tensor like x, a split layer's PartialSums of x's dtype,
    or None); None where it does not, and the caller runs the residual norm and the linear layer itself."""
    inputs = _fused_norm_inputs(x, y, ln_weight, ln_bias, weight, bias)
    if inputs is None:
        return None
    return triton_residual_norm_linear(x, *inputs, ln_weight, ln_bias, eps, weight, bias, gelu)


def linear_projecting_features_after_residual_norm(
        x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], ln_weight: torch.Tensor,
        ln_bias: Optional[torch.Tensor], eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor],
        sigma: torch.Tensor, w_tilde: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(x + y, *linear_projecting_features(LayerNorm(x + y), ...)) as one kernel where the decode path takes the
    inputs (as linear_after_residual_norm, with the projection epilogue); None where it does not."""
    inputs = _fused_norm_inputs(x, y, ln_weight, ln_bias, weight, bias)
    if inputs is None or not decode_linear_projection_parts(x, weight, sigma, w_tilde):
        return None
    return triton_residual_norm_linear_projected(x, *inputs, ln_weight, ln_bias, eps, weight, bias, sigma, w_tilde)


def linear_argmax_after_residual_norm(
        x: torch.Tensor, y: Union[torch.Tensor, PartialSums, None], ln_weight: torch.Tensor,
        ln_bias: Optional[torch.Tensor], eps: float, weight: torch.Tensor, bias: Optional[torch.Tensor],
        out_index: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(x + y, linear_argmax(LayerNorm(x + y), weight, bias, out_index)) with the add and norm inside the linear
    layer's kernel where the decode path takes the inputs (as linear_after_residual_norm: a d_model 1024 model's
    LM head is too wide for it); None where it does not."""
    inputs = _fused_norm_inputs(x, y, ln_weight, ln_bias, weight, bias)
    if inputs is None or not argmax_index_fits(x, out_index):
        return None
    return triton_residual_norm_linear_argmax(x, *inputs, ln_weight, ln_bias, eps, weight, bias, out_index)
