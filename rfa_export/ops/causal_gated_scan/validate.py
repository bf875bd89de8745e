"""Shape and dtype checks of the contract, shared by the torch op and the runtimes."""

from typing import Optional

import torch

from .state_storage import state_columns

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# the state's storage dtypes beside the accumulation dtype (docs/op_contract.md, "State dtype")
REDUCED_STATE_DTYPES = (torch.bfloat16, torch.int8)


def check_scan_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
) -> None:
    """Raise ValueError naming the first input that breaks docs/op_contract.md.

    float64 is accepted beside fp32/fp16/bf16 for reference testing (the state is then float64). The state
    is fp32 (float64 for float64 activations), bf16 or int8-row storage ([.., F, Dv + 2]).
    """
    if q.dim() != 4:
        raise ValueError(f"q_feat must be [B, T, H, F], got shape {tuple(q.shape)}")
    B, T, H, F = q.shape
    if tuple(k.shape) != (B, T, H, F):
        raise ValueError(f"k_feat must match q_feat {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must be [B, T, H, Dv] = [{B}, {T}, {H}, Dv], got {tuple(v.shape)}")
    if q.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"q_feat dtype {q.dtype} is not one of fp32, fp16, bf16")
    for name, t in (("k_feat", k), ("v", v), ("g", g)):
        if t is not None and t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from q_feat dtype {q.dtype}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be [B, T, H] = [{B}, {T}, {H}], got {tuple(g.shape)}")
    if initial_state is not None:
        Dv = v.shape[-1]
        want = (torch.float64 if q.dtype == torch.float64 else torch.float32,) + REDUCED_STATE_DTYPES
        if initial_state.dtype not in want:
            raise ValueError(f"initial_state dtype must be one of {', '.join(map(str, want))}, got {initial_state.dtype}")
        cols = state_columns(Dv, initial_state.dtype)
        if tuple(initial_state.shape) != (B, H, F, cols):
            width = "Dv + 2" if cols == Dv + 2 else "Dv + 1"
            raise ValueError(
                f"initial_state must be [B, H, F, {width}] = [{B}, {H}, {F}, {cols}] as {initial_state.dtype}, "
                f"got {tuple(initial_state.shape)}"
            )
