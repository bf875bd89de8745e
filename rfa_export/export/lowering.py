"""How each lowering of rfa::CausalGatedScan rewrites an exported graph (the registry of lowerings, with
their opsets and help, is rfa_export/format/lowerings.py).

plugin: keep the rfa node (TensorRT's parser swaps in our plugin) and attach the portable body as an ONNX
        local function, so every runtime can run the file as is.
onnx:   replace the node by the standard LinearAttention (opset 27) plus the normaliser.
ort:    replace it by com.microsoft.LinearAttention (onnxruntime's native CPU/CUDA kernels) plus the normaliser.
"""

import importlib
from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..format.config import DEFAULT_EPS
from ..format.lowerings import LOWERINGS, lowering as registered_lowering
from ..format.scan_op import DOMAIN, OP_TYPE, overload_of
from .onnx_builder import NodeWriter, bounded_readout_nodes, concat_ints
from .scan_function import causal_gated_scan_function
from .state_storage_nodes import float_state_to_int8, int8_state_to_float

BASE_OPSET = LOWERINGS["plugin"].opsets[""]
LINEAR_ATTENTION_OPSET = LOWERINGS["onnx"].opsets[""]
# log g is floored here before it reaches LinearAttention: a gate that rounds to exactly 0 would give
# -inf, which those kernels are not specified to handle; exp(-87) ~ 1.6e-38 is 0 for every purpose.
MIN_LOG_GATE = -87.0


def opsets_of(lowering: str) -> Dict[str, int]:
    """The opset imports a model of this lowering declares."""
    return dict(registered_lowering(lowering).opsets)


def scan_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def apply_lowering(model: onnx.ModelProto, lowering: str) -> onnx.ModelProto:
    """Rewrite, in place, a freshly exported model whose scans are bare rfa::CausalGatedScan nodes, with the
    function the registry names for `lowering`."""
    module, function = registered_lowering(lowering).apply.split(":")
    return getattr(importlib.import_module(module), function)(model)


def attach_local_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """plugin: the rfa nodes stay, each gets its overload, and the portable bodies are attached."""
    opset = next(o.version for o in model.opset_import if o.domain == "")
    # the types torch.onnx recorded (no shape inference: the plugin lowering must not copy a large model)
    shapes = {vi.name + ":type": vi.type.tensor_type.elem_type
              for vi in list(model.graph.input) + list(model.graph.value_info)}
    used = set()
    for node in scan_nodes(model):
        gated = len(node.input) > 3 and node.input[3] != ""
        int8_state = _state_type(node, shapes) == TensorProto.INT8
        node.overload = overload_of(gated, int8_state)
        used.add((gated, int8_state))
    existing = {(f.domain, f.name, f.overload) for f in model.functions}
    for gated, int8_state in sorted(used):
        if (DOMAIN, OP_TYPE, overload_of(gated, int8_state)) not in existing:
            model.functions.append(causal_gated_scan_function(gated, opset, int8_state=int8_state))
    return model


def _state_type(node: onnx.NodeProto, shapes: Dict[str, list]) -> int:
    """The element type of a scan node's initial_state (float32 when it has none)."""
    s0 = node.input[4] if len(node.input) > 4 else ""
    return shapes.get(s0 + ":type", TensorProto.FLOAT) if s0 else TensorProto.FLOAT


def to_standard_linear_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx: the standard LinearAttention (opset 27) plus the normaliser."""
    model.CopyFrom(onnx.version_converter.convert_version(model, LINEAR_ATTENTION_OPSET))
    _replace_with_linear_attention(model, "onnx")
    return model


def to_onnxruntime_linear_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """ort: com.microsoft.LinearAttention plus the normaliser."""
    _replace_with_linear_attention(model, "ort")
    return model


def _static_dim(shapes: Dict[str, list], name: str, axis: int) -> int:
    dims = shapes.get(name)
    if dims is None or not isinstance(dims[axis], int):
        raise ValueError(f"cannot lower {OP_TYPE}: dimension {axis} of {name!r} is not static")
    return dims[axis]


def _value_shapes(model: onnx.ModelProto) -> Dict[str, list]:
    """name -> dims, and name + ":type" -> element type, of every value shape inference knows."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        shapes[vi.name + ":type"] = t.elem_type
    return shapes


def _replace_with_linear_attention(model: onnx.ModelProto, lowering: str) -> None:
    shapes = _value_shapes(model)
    new_nodes = []
    for index, node in enumerate(model.graph.node):
        if not (node.domain == DOMAIN and node.op_type == OP_TYPE):
            new_nodes.append(node)
            continue
        eps = next((a.f for a in node.attribute if a.name == "eps"), None)
        new_nodes.extend(_linear_attention_nodes(node, index, shapes, eps, lowering))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.functions[:]
    keep = [o for o in model.opset_import if o.domain not in (DOMAIN, "com.microsoft")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if lowering == "ort":
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _linear_attention_nodes(node, index: int, shapes, eps, lowering: str) -> List[onnx.NodeProto]:
    q, k, v = node.input[:3]
    g = node.input[3] if len(node.input) > 3 and node.input[3] else None
    s0 = node.input[4] if len(node.input) > 4 and node.input[4] else None
    out_name, state_name = node.output
    H = _static_dim(shapes, q, 2)
    F = _static_dim(shapes, q, 3)
    Dv = _static_dim(shapes, v, 3)
    f32 = TensorProto.FLOAT
    w = NodeWriter(f"scan{index}/")

    # LinearAttention runs in fp32 whatever the activations are: the contract accumulates in fp32.
    qf, kf, vf = (w.op("Cast", x, to=f32) for x in (q, k, v))
    one = w.const(1.0, np.float32, "one")
    if g is not None:
        gf = w.op("Cast", g, to=f32)
        kf = w.op("Mul", kf, w.op("Unsqueeze", w.op("Sub", one, gf), w.ints(-1)))
        decay = w.op("Max", w.op("Log", gf), w.const(MIN_LOG_GATE, np.float32, "min_log_g"))
    shape_q = w.op("Shape", q)
    BT = w.dims(shape_q, 0, 2)
    ones = w.op("ConstantOfShape", concat_ints(w, [BT, w.ints(H, 1)]), value=helper.make_tensor("v1", f32, [1], [1.0]))
    vf = w.op("Concat", vf, ones, axis=-1)
    q3 = w.op("Reshape", qf, w.ints(0, 0, H * F))
    k3 = w.op("Reshape", kf, w.ints(0, 0, H * F))
    v3 = w.op("Reshape", vf, w.ints(0, 0, H * (Dv + 1)))
    # a reduced-precision state is widened for LinearAttention and stored back below
    state_type = _state_type(node, shapes)
    if state_type == TensorProto.INT8:
        past = int8_state_to_float(w, s0)
    else:
        past = w.op("Cast", s0, to=f32) if state_type != f32 else (s0 or "")
    inputs = [q3, k3, v3, past, decay if g is not None else ""]
    attrs = dict(q_num_heads=H, kv_num_heads=H, scale=1.0, update_rule="gated" if g is not None else "linear")
    domain = "com.microsoft" if lowering == "ort" else ""
    o3, present = w.op("LinearAttention", *inputs, outputs=2, domain=domain, **attrs)
    o = w.op("Reshape", o3, w.ints(0, 0, H, Dv + 1))
    num = w.op("Slice", o, w.ints(0), w.ints(Dv), w.ints(3))
    den = w.op("Squeeze", w.op("Slice", o, w.ints(Dv), w.ints(Dv + 1), w.ints(3)), w.ints(3))
    eps_c = w.const(DEFAULT_EPS if eps is None else eps, np.float32, "eps")
    out = bounded_readout_nodes(w, num, den, eps_c)
    w.nodes.append(helper.make_node("CastLike", [out, v], [out_name], name=f"scan{index}/out"))
    if state_type == TensorProto.INT8:
        w.nodes.append(helper.make_node("Identity", [float_state_to_int8(w, present)], [state_name],
                                        name=f"scan{index}/state"))
    elif state_type != f32:
        w.nodes.append(helper.make_node("CastLike", [present, s0], [state_name], name=f"scan{index}/state"))
    else:
        w.nodes.append(helper.make_node("Identity", [present], [state_name], name=f"scan{index}/state"))
    return w.nodes
