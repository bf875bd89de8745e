"""The int8-row state format (ops/causal_gated_scan/state_storage.py) in standard ONNX ops, for the portable
body and the LinearAttention lowerings."""

import math

import numpy as np
from onnx import TensorProto

from ..ops.causal_gated_scan.state_storage import INT8_CODE_MAX, INT8_EXPONENT_RANGE
from .onnx_builder import NodeWriter, Value


def int8_state_to_float(w: NodeWriter, state: Value) -> Value:
    """int8 [.., Dv + 2] (codes | row exponent) -> float32 [.., Dv + 1] = code * 2^e; exact."""
    f32 = TensorProto.FLOAT
    codes = w.op("Cast", w.op("Slice", state, w.ints(0), w.ints(-1), w.ints(-1)), to=f32)
    e = w.op("Cast", w.op("Slice", state, w.ints(-1), w.ints(np.iinfo(np.int64).max), w.ints(-1)), to=f32)
    return w.op("Mul", codes, w.op("Pow", w.const(2.0, np.float32, "two"), e))


def float_state_to_int8(w: NodeWriter, x: Value) -> Value:
    """float32 [.., Dv + 1] -> int8 [.., Dv + 2]: per row the least e with 127 * 2^e >= max |x| (clamped), codes
    x * 2^-e rounded to nearest even. e comes from a float log2, then is corrected by exact power-of-two
    comparisons, so it is the same integer the torch op computes with frexp."""
    f32 = TensorProto.FLOAT
    two = w.const(2.0, np.float32, "two")
    qmax = w.const(float(INT8_CODE_MAX), np.float32, "qmax")
    one = w.const(1.0, np.float32, "one")
    lo, hi = INT8_EXPONENT_RANGE
    m = w.op("ReduceMax", w.op("Abs", x), w.ints(-1), keepdims=1)
    log2 = w.op("Div", w.op("Log", m), w.const(math.log(2.0), np.float32, "ln2"))
    e = w.op("Ceil", w.op("Sub", log2, w.const(math.log2(INT8_CODE_MAX), np.float32, "log2_qmax")))
    e = w.op("Clip", e, w.const(lo - 1.0, np.float32, "lo"), w.const(hi + 1.0, np.float32, "hi"))
    up = w.op("Greater", m, w.op("Mul", qmax, w.op("Pow", two, e)))
    down = w.op("LessOrEqual", m, w.op("Mul", qmax, w.op("Pow", two, w.op("Sub", e, one))))
    e = w.op("Sub", w.op("Add", e, w.op("Cast", up, to=f32)), w.op("Cast", down, to=f32))
    e = w.op("Clip", e, w.const(float(lo), np.float32, "lo"), w.const(float(hi), np.float32, "hi"))
    codes = w.op("Round", w.op("Mul", x, w.op("Pow", two, w.op("Neg", e))))
    codes = w.op("Clip", codes, w.const(-float(INT8_CODE_MAX), np.float32, "qmin"), qmax)
    return w.op("Concat", w.op("Cast", codes, to=TensorProto.INT8), w.op("Cast", e, to=TensorProto.INT8), axis=-1)
