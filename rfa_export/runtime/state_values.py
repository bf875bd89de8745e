"""What a state's portable (host) form stands for: its entries are the stored ones in float32, so an int8-row
state's are codes and row exponents (docs/op_contract.md, "State dtype")."""

import numpy as np


def state_values(array: np.ndarray, dtype: str) -> np.ndarray:
    """[.., F, Dv + 1] float64 values of one state tensor in portable form stored as dtype (config.state_dtype)."""
    a = np.asarray(array, dtype=np.float64)
    if dtype == "int8":
        return a[..., :-1] * np.exp2(a[..., -1:])
    return a
