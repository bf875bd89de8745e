"""The fused batch-1 decode step of a whole model (plugins/kernels/lm_decode_step.cu), via ctypes."""

import ctypes
import math
from typing import Dict, List, Optional, Tuple

import torch

from ...format.feature_maps import feature_map
from ..native import DTYPE_CODES, FEATURE_KIND_CODES, check_status, load_kernels_for, require_kernels
from .weights import LayerWeights, LMStepWeights

MAX_LAYERS = 64  # RFA_LM_STEP_MAX_LAYERS
_LAYER_FIELDS = [f for f in LayerWeights.__dataclass_fields__]


class _Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in _LAYER_FIELDS]


class _Args(ctypes.Structure):
    _fields_ = [
        ("n_layers", ctypes.c_int), ("d_model", ctypes.c_int), ("n_heads", ctypes.c_int),
        ("num_features", ctypes.c_int), ("d_ffn", ctypes.c_int), ("vocab_size", ctypes.c_int),
        ("kind", ctypes.c_int), ("gated", ctypes.c_int), ("sinusoidal", ctypes.c_int), ("dtype", ctypes.c_int),
        ("layer_norm_eps", ctypes.c_float), ("eps", ctypes.c_float), ("embed_scale", ctypes.c_float),
        ("layers", ctypes.c_void_p), ("states", ctypes.c_void_p * MAX_LAYERS),
        ("embed", ctypes.c_void_p), ("ln_f_weight", ctypes.c_void_p), ("ln_f_bias", ctypes.c_void_p),
        ("lm_head_weight", ctypes.c_void_p), ("lm_head_bias", ctypes.c_void_p),
        ("token", ctypes.c_void_p), ("position", ctypes.c_void_p), ("logits", ctypes.c_void_p),
        ("next_token", ctypes.c_void_p), ("workspace", ctypes.c_void_p), ("timeline", ctypes.c_void_p),
    ]


def _bind(lib) -> None:
    if hasattr(lib, "rfa_lm_step"):
        lib.rfa_lm_step.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p]
        lib.rfa_lm_step_check.argtypes = [ctypes.POINTER(_Args)]
        lib.rfa_lm_step_workspace_size.argtypes = [ctypes.POINTER(_Args)]
        lib.rfa_lm_step_workspace_size.restype = ctypes.c_size_t


# the layers' pointer table on the device, per weights object (weights are rebuilt when a parameter changes)
_tables: Dict[int, Tuple[LMStepWeights, torch.Tensor]] = {}
# zeroed workspaces per (device, stream): the kernel's barrier counters must not be shared by concurrent steps
_workspaces: Dict[Tuple[int, int], torch.Tensor] = {}


def _layer_table(w: LMStepWeights) -> torch.Tensor:
    hit = _tables.get(id(w))
    if hit is not None and hit[0] is w:
        return hit[1]
    rows = (_Layer * len(w.layers))(*[_Layer(*[getattr(layer, n).data_ptr() for n in _LAYER_FIELDS])
                                      for layer in w.layers])
    table = torch.frombuffer(bytearray(rows), dtype=torch.uint8).to(w.embed.device)
    if len(_tables) >= 8:  # a few models at a time; the entry keeps its weights alive, so an id cannot be reused
        _tables.pop(next(iter(_tables)))
    _tables[id(w)] = (w, table)
    return table


def _args(w: LMStepWeights, token, position, states, logits_ptr=None, next_token_ptr=None, layers_ptr=None,
          workspace_ptr=None) -> _Args:
    V, d = w.embed.shape
    first = w.layers[0]
    a = _Args()
    a.n_layers, a.d_model, a.n_heads = len(w.layers), d, w.n_heads
    a.num_features, a.d_ffn, a.vocab_size = first.w_tilde.shape[1], first.ffn1_weight.shape[0], V
    a.kind, a.gated, a.sinusoidal = FEATURE_KIND_CODES[w.feature_map], int(w.gated), int(w.sinusoidal)
    a.dtype = DTYPE_CODES[w.embed.dtype]
    a.layer_norm_eps, a.eps, a.embed_scale = w.layer_norm_eps, w.eps, w.embed_scale
    a.layers = layers_ptr or 1  # the check needs non-null pointers only
    for i, s in enumerate(states[:MAX_LAYERS]):
        a.states[i] = s.data_ptr()
    a.embed, a.ln_f_weight, a.ln_f_bias = w.embed.data_ptr(), w.ln_f_weight.data_ptr(), w.ln_f_bias.data_ptr()
    a.lm_head_weight = w.lm_head_weight.data_ptr()
    a.lm_head_bias = None if w.lm_head_bias is None else w.lm_head_bias.data_ptr()
    a.token, a.position = token.data_ptr(), position.data_ptr()
    a.logits, a.next_token, a.workspace = logits_ptr or 1, next_token_ptr, workspace_ptr or 1
    return a


def _tensors(w: LMStepWeights) -> List[torch.Tensor]:
    ts = [w.embed, w.ln_f_weight, w.ln_f_bias, w.lm_head_weight] + ([] if w.lm_head_bias is None else [w.lm_head_bias])
    return ts + [getattr(layer, n) for layer in w.layers for n in _LAYER_FIELDS]


def lm_step_kernel_supports(w: LMStepWeights, token: torch.Tensor, position: torch.Tensor,
                            states: List[torch.Tensor]) -> bool:
    """True when the kernel takes these inputs as they are: CUDA, fp16/bf16 weights all of one dtype, dense
    and on one device; token and position int64 [1]; fp32 dense states [1, H, F, dh + 1], one per layer; the
    sizes the kernel supports (rfa_lm_step_check, which also asks for a device of compute capability 9.0)."""
    if w.feature_map not in FEATURE_KIND_CODES or w.embed.dtype not in (torch.float16, torch.bfloat16):
        return False
    if not w.layers or len(w.layers) > MAX_LAYERS or len(states) != len(w.layers):
        return False
    device, dtype = w.embed.device, w.embed.dtype
    if not device.type == "cuda" or any(t.device != device or t.dtype != dtype or not t.is_contiguous()
                                        or t.data_ptr() % 16 for t in _tensors(w)):
        return False
    for t in (token, position):
        if t.device != device or t.dtype != torch.int64 or t.numel() != 1:
            return False
    H, dh = w.layers[0].sigma.shape
    F = feature_map(w.feature_map).feature_size(w.layers[0].w_tilde.shape[1])
    if any(s.device != device or s.dtype != torch.float32 or tuple(s.shape) != (1, H, F, dh + 1)
           or not s.is_contiguous() for s in states):
        return False
    if not all(math.isfinite(v) for v in (w.layer_norm_eps, w.eps, w.embed_scale)):
        return False
    lib = load_kernels_for(w.embed, _bind)
    if lib is None or not hasattr(lib, "rfa_lm_step_check"):
        return False
    with torch.cuda.device(device):
        return lib.rfa_lm_step_check(ctypes.byref(_args(w, token, position, states))) == 0


def cuda_lm_decode_step_(w: LMStepWeights, token: torch.Tensor, position: torch.Tensor, states: List[torch.Tensor],
                         next_token: Optional[torch.Tensor] = None,
                         timeline: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The step on the current stream: states updated in place -> logits [1, vocab] of the weights' dtype;
    next_token (int64 [1], may be `token`) gets their argmax, or -1 (and NaN logits, the states unchanged) for a
    token outside the vocabulary. timeline: None, or int64 [4 + 10 n_layers] on the device that receives where
    block 0's time went (lm_decode_step.h; read by benchmarks/bench_decode_gpu.py --timeline). The caller has
    checked lm_step_kernel_supports."""
    lib = require_kernels(_bind)
    device = w.embed.device
    stream = torch.cuda.current_stream(device)
    logits = torch.empty((1, w.embed.shape[0]), device=device, dtype=w.embed.dtype)
    args = _args(w, token, position, states, logits.data_ptr(), None if next_token is None else next_token.data_ptr(),
                 _layer_table(w).data_ptr())
    key = (device.index, stream.cuda_stream)
    workspace = _workspaces.get(key)
    size = lib.rfa_lm_step_workspace_size(ctypes.byref(args))
    if workspace is None or workspace.numel() * 4 < size:
        workspace = _workspaces[key] = torch.zeros(size // 4, device=device, dtype=torch.float32)
    args.workspace = workspace.data_ptr()
    if timeline is not None:
        if timeline.dtype != torch.int64 or timeline.device != device or timeline.numel() < 4 + 10 * len(w.layers):
            raise ValueError(f"timeline must be int64 [{4 + 10 * len(w.layers)}] on {device}")
        args.timeline = timeline.data_ptr()
    with torch.cuda.device(device):
        status = lib.rfa_lm_step(ctypes.byref(args), ctypes.c_void_p(stream.cuda_stream))
    check_status(lib, status, "rfa_lm_step")
    return logits
