"""A small helper to write ONNX node lists by hand (function bodies, Scan bodies)."""

from typing import List, Sequence, Union

import numpy as np
import onnx
from onnx import helper

Value = str


class NodeWriter:
    """Appends nodes with unique output names: `w.op("MatMul", a, b)` returns the output name."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: List[onnx.NodeProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, *inputs: Value, outputs: int = 1, name: str = None, **attrs) -> Union[Value, List[Value]]:
        outs = [self._name(name or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name("n_" + op_type), **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=None, name: str = "c") -> Value:
        arr = np.asarray(value, dtype=dtype)
        out = self._name(name)
        self.nodes.append(helper.make_node("Constant", [], [out], value=onnx.numpy_helper.from_array(arr, out)))
        return out

    def ints(self, *values: int) -> Value:
        return self.const(list(values), np.int64, "ints")

    def attr_const(self, attr: str, attr_type: int, name: str) -> Value:
        """A Constant whose value is the enclosing function's attribute `attr` (value_float / value_int ...)."""
        field = {onnx.AttributeProto.FLOAT: "value_float", onnx.AttributeProto.INT: "value_int"}[attr_type]
        out = self._name(name)
        node = helper.make_node("Constant", [], [out], name=self._name("n_attr"))
        ref = onnx.AttributeProto(name=field, ref_attr_name=attr, type=attr_type)
        node.attribute.append(ref)
        self.nodes.append(node)
        return out

    def dims(self, shape: Value, start: int, end: int) -> Value:
        """shape[start:end] as a 1-D int64 tensor."""
        return self.op("Slice", shape, self.ints(start), self.ints(end), name="dim")


def concat_ints(w: NodeWriter, parts: Sequence[Value]) -> Value:
    return w.op("Concat", *parts, axis=0, name="shape")


def bounded_readout_nodes(w: NodeWriter, num: Value, den: Value, eps: Value) -> Value:
    """The contract's normaliser in ONNX, mirroring ops/causal_gated_scan/readout.py:
    den_c = max(den, eps * max_j |num_j|); out = num / den_c, 0 where den_c == 0.
    num [..., Dv] and den [...] fp32; eps a scalar fp32 value."""
    zero, one = w.const(0.0, np.float32, "zero"), w.const(1.0, np.float32, "one")
    m = w.op("ReduceMax", w.op("Abs", num), w.ints(-1), keepdims=0)
    den_c = w.op("Max", den, w.op("Mul", eps, m))
    safe = w.op("Where", w.op("Greater", den_c, zero), den_c, one)
    return w.op("Div", num, w.op("Unsqueeze", safe, w.ints(-1)))
