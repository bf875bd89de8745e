"""The state's storage formats (docs/op_contract.md, "State dtype"): float32, bfloat16 and int8 rows.

An int8 state is [.., F, Dv + 2]: columns 0..Dv hold the codes of [S | z], column Dv + 1 the row's
exponent e; an entry is code * 2^e. On store each row takes the least e with 127 * 2^e >= max |x|, clamped
to [-120, 120] (an all-zero row takes -120; the clamp keeps 2^e and 2^-e normal float32 numbers, so scaling
by them is exact), and its codes are x * 2^-e rounded to nearest even, clipped to [-127, 127].
"""

import torch

INT8_CODE_MAX = 127
INT8_EXPONENT_RANGE = (-120, 120)


def state_columns(Dv: int, dtype: torch.dtype) -> int:
    """Width of a state row stored as dtype: Dv + 1, or Dv + 2 for int8 (the row exponent)."""
    return Dv + 2 if dtype == torch.int8 else Dv + 1


def int8_row_exponent(m: torch.Tensor) -> torch.Tensor:
    """The least e with 127 * 2^e >= m (m >= 0, float), clamped to INT8_EXPONENT_RANGE; integer tensor."""
    mant, e = torch.frexp(m)  # m = mant * 2^e, mant in [0.5, 1) (0 for m = 0)
    e = e - 7 + (mant > INT8_CODE_MAX / 128).to(e.dtype)
    e = torch.where(m == 0, INT8_EXPONENT_RANGE[0], e)  # an all-zero row: the least exponent
    return e.clamp(*INT8_EXPONENT_RANGE)


def widen_state(state: torch.Tensor, Dv: int, dtype: torch.dtype) -> torch.Tensor:
    """[.., F, Dv + 1] in dtype (float32/float64) from any storage format; exact."""
    if state.dtype != torch.int8:
        return state.to(dtype)
    e = state[..., Dv + 1 :].to(dtype)
    return state[..., : Dv + 1].to(dtype) * torch.exp2(e)


def narrow_state(state: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """[.., F, Dv + 1] float32/float64 to storage: a float dtype rounds to nearest even; int8 quantises each row."""
    if storage != torch.int8:
        return state.to(storage)
    e = int8_row_exponent(state.abs().amax(-1, keepdim=True))
    codes = torch.round(state * torch.exp2(-e.to(state.dtype))).clamp(-INT8_CODE_MAX, INT8_CODE_MAX)
    return torch.cat([codes, e.to(state.dtype)], -1).to(torch.int8)
