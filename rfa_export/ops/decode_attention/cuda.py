"""One decode step of a causal RFA layer as one CUDA launch (plugins/kernels/decode_attention_step.h), via
ctypes: the random features of q and k, the gate's sigmoid and the scan step, the state updated in place."""

import ctypes
from typing import Optional

import torch

from ...format.feature_maps import FEATURE_MAPS
from ..causal_gated_scan.state_storage import state_columns
from ..native import DTYPE_CODES, FEATURE_KIND_CODES, STATE_DTYPE_CODES, check_status, data_ptr, load_kernels_for, require_kernels


class _DecodeArgs(ctypes.Structure):
    _fields_ = [
        ("B", ctypes.c_int), ("H", ctypes.c_int), ("dh", ctypes.c_int), ("D", ctypes.c_int),
        ("kind", ctypes.c_int), ("dtype", ctypes.c_int), ("eps", ctypes.c_float), ("row_stride", ctypes.c_longlong),
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("gate_logits", ctypes.c_void_p),
        ("sigma", ctypes.c_void_p), ("w_tilde", ctypes.c_void_p), ("keep", ctypes.c_void_p),
        ("state", ctypes.c_void_p), ("out", ctypes.c_void_p), ("overlap_state_load", ctypes.c_int),
        ("proj", ctypes.c_void_p), ("proj_parts", ctypes.c_int), ("state_dtype", ctypes.c_int),
        ("allow_next_early", ctypes.c_int), ("timeline", ctypes.c_void_p),
    ]

# with overlap_state_load, a step of at most one block per multiprocessor (B * H) lets the next kernel launch at
# its start, so that kernel's reads before its wait overlap the whole step (benchmarks/bench_decode_variants_gpu.py)
NEXT_KERNEL_AT_START = True
TIMELINE_FIELDS = 16  # kStepTimelineFields: timestamps per block (decode_attention_step.h, "timeline")


class StepTimeline:
    """Profiling: where each block of the fused step spends its time (decode_attention_step.h, "timeline").
    While set as TIMELINE, the steps launched with overlap_state_load write into `stamps`, the k-th launch into
    slot k mod `launches` (a decoding step's layers, in order, when launches = n_layers)."""

    def __init__(self, launches: int, blocks: int, device):
        self.launches, self.blocks = launches, blocks
        self.stamps = torch.zeros((launches, blocks, TIMELINE_FIELDS), dtype=torch.int64, device=device)
        self.calls = 0

    def slot(self, blocks: int) -> int:
        """The address of the next launch's timestamps."""
        if blocks > self.blocks:
            raise ValueError(f"the timeline holds {self.blocks} blocks per launch, the step has {blocks}")
        address = self.stamps[self.calls % self.launches].data_ptr()
        self.calls += 1
        return address


TIMELINE = None  # a StepTimeline while profiling


def _bind(lib) -> None:
    lib.rfa_decode_attention_step.argtypes = [ctypes.POINTER(_DecodeArgs), ctypes.c_void_p]
    lib.rfa_decode_attention_step_check.argtypes = [ctypes.POINTER(_DecodeArgs)]


def _layout_ok(q, k, v, gate_logits, row: int) -> bool:
    """q, k, v [B, H, dh] and gate_logits [B, H]: batch entries `row` elements apart, dense within one."""
    B, H, dh = q.shape
    for t in (q, k, v):
        if t.shape != (B, H, dh) or (B > 1 and t.stride(0) != row) or t.stride(1) != dh or t.stride(2) != 1:
            return False
    if gate_logits is not None:
        if gate_logits.shape != (B, H) or (B > 1 and gate_logits.stride(0) != row) or gate_logits.stride(1) != 1:
            return False
    return True


def _args(q, k, v, gate_logits, sigma, w_tilde, kind, state, eps, keep, out_ptr, overlap=False,
          proj=None) -> _DecodeArgs:
    B, H, dh = q.shape
    D = w_tilde.shape[1]
    return _DecodeArgs(B, H, dh, D, FEATURE_KIND_CODES[kind], DTYPE_CODES[q.dtype], float(eps), q.stride(0) if B > 1 else H * dh,
                       data_ptr(q), data_ptr(k), data_ptr(v), data_ptr(gate_logits), data_ptr(sigma), data_ptr(w_tilde),
                       data_ptr(keep), data_ptr(state), out_ptr, int(overlap), data_ptr(proj),
                       0 if proj is None else proj.shape[3], STATE_DTYPE_CODES[state.dtype],
                       int(NEXT_KERNEL_AT_START),  # the kernel honours it only with overlap_state_load
                       TIMELINE.slot(B * H) if TIMELINE is not None and overlap and out_ptr else None)


def decode_attention_kernel_supports(q, k, v, gate_logits, sigma, w_tilde, kind, state, keep=None) -> bool:
    """True when the fused kernel takes these inputs as they are: CUDA tensors of one dtype (fp32/fp16/bf16),
    the layout of _layout_ok, a contiguous state [B, H, F, dh + 1] of fp32 or bf16 or [B, H, F, dh + 2] of int8
    rows (docs/op_contract.md, "State dtype"), keep None or int64 [B], and sizes the
    kernel supports (dh, D <= 128; F and dh multiples of 16 in [16, 256])."""
    if not q.is_cuda or q.dtype not in DTYPE_CODES or kind not in FEATURE_KIND_CODES or q.dim() != 3:
        return False
    tensors = [k, v, sigma, w_tilde] + ([gate_logits] if gate_logits is not None else [])
    if any(t.dtype != q.dtype or t.device != q.device for t in tensors):
        return False
    B, H, dh = q.shape
    D = w_tilde.shape[1] if w_tilde.dim() == 3 else -1
    F = FEATURE_MAPS[kind].feature_size(D)
    if w_tilde.shape != (H, D, dh) or sigma.shape != (H, dh) or not (sigma.is_contiguous() and w_tilde.is_contiguous()):
        return False
    if (state is None or state.dtype not in STATE_DTYPE_CODES or state.shape != (B, H, F, state_columns(dh, state.dtype))
            or not state.is_contiguous()):
        return False
    if keep is not None and (keep.dtype != torch.int64 or keep.shape != (B,) or not keep.is_contiguous()):
        return False
    if not _layout_ok(q, k, v, gate_logits, q.stride(0)):
        return False
    lib = load_kernels_for(q, _bind)
    if lib is None:
        return False
    args = _args(q, k, v, gate_logits, sigma, w_tilde, kind, state, 0.0, keep, state.data_ptr())
    return lib.rfa_decode_attention_step_check(ctypes.byref(args)) == 0


def cuda_decode_attention_step_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: Optional[torch.Tensor],
    sigma: torch.Tensor,
    w_tilde: torch.Tensor,
    kind: str,
    state: torch.Tensor,
    eps: float,
    keep: Optional[torch.Tensor] = None,
    overlap_state_load: bool = False,
    proj: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Same contract as naive_decode_attention_step, but `state` is updated in place; returns out [B, H, dh].
    Inputs must pass decode_attention_kernel_supports.

    overlap_state_load: start reading `state` and `w_tilde` while the kernel launched just before on this
    stream is still running (Hopper and later); only when that kernel writes neither, as in a decoding
    step right after the q/k/v projection. With it, NEXT_KERNEL_AT_START also lets the next kernel launch early.
    proj: the projections of q and k made by the q/k/v GEMM (ops/decode_linear's
    triton_decode_linear_projected), fp32 [B, H, 2, P, D + 1]; the kernel then maps them instead of q and k."""
    lib = require_kernels(_bind)
    if proj is not None:
        B, H, _ = q.shape
        D = w_tilde.shape[1]
        if (proj.dtype != torch.float32 or proj.device != q.device or not proj.is_contiguous() or proj.dim() != 5
                or proj.shape[:3] != (B, H, 2) or proj.shape[4] != D + 1):
            raise ValueError(f"proj must be a dense fp32 [B, H, 2, P, D + 1] = [{B}, {H}, 2, P, {D + 1}] tensor on "
                             f"{q.device}, got {proj.dtype} {tuple(proj.shape)}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    args = _args(q, k, v, gate_logits, sigma, w_tilde, kind, state, eps, keep, out.data_ptr(), overlap_state_load, proj)
    stream = torch.cuda.current_stream(q.device).cuda_stream
    status = lib.rfa_decode_attention_step(ctypes.byref(args), ctypes.c_void_p(stream))
    check_status(lib, status, "rfa_decode_attention_step")
    return out
