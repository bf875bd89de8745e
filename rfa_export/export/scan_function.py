"""The portable body of rfa::CausalGatedScan: an ONNX local function of standard ops, linear in T.

Chunks of C = min(chunk, T) steps: inside a chunk, masked matmuls; across chunks, a Scan that carries
the fp32 state. Decays are exp of segment sums of log g (a masked CumSum, every exponent <= 0), as in
rfa_export/ops/causal_gated_scan/chunk.py, which this mirrors op for op.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..format.scan_op import (DEFAULT_EPS, DOMAIN, INPUTS, OP_TYPE, OP_VERSION, OUTPUTS, OVERLOAD, PLUGIN_ATTRIBUTES,
                              overload_of)
from .onnx_builder import NodeWriter, bounded_readout_nodes, concat_ints
from .state_storage_nodes import float_state_to_int8, int8_state_to_float

__all__ = ["DOMAIN", "OP_TYPE", "OP_VERSION", "OVERLOAD", "PLUGIN_ATTRIBUTES", "causal_gated_scan_function"]
DEFAULT_CHUNK = 16


def _chunk_scan_body() -> onnx.GraphProto:
    """Scan body over chunks: state S [BH, F, Dv+1]; per chunk qd [BH, C, F], U [BH, F, Dv+1], d [BH, 1, 1]."""
    w = NodeWriter("b_")
    inter = w.op("MatMul", "qd_n", "S_in", name="inter")
    s_out = w.op("Add", w.op("Mul", "d_n", "S_in"), "U_n", name="s_next")
    w.nodes.append(helper.make_node("Identity", [s_out], ["S_out"]))
    w.nodes.append(helper.make_node("Identity", [inter], ["inter_out"]))
    f32 = TensorProto.FLOAT
    return helper.make_graph(
        w.nodes,
        "chunk_step",
        [helper.make_tensor_value_info(n, f32, None) for n in ("S_in", "qd_n", "U_n", "d_n")],
        [helper.make_tensor_value_info(n, f32, None) for n in ("S_out", "inter_out")],
    )


def causal_gated_scan_function(gated: bool, opset: int, chunk: int = DEFAULT_CHUNK,
                               int8_state: bool = False) -> onnx.FunctionProto:
    """FunctionProto rfa::CausalGatedScan (overload "gated", "ungated" or, for an int8-row state,
    "gated_int8_state"); docs/op_contract.md.

    The initial_state input must be present (the exporter passes zeros where the model has none). A float
    state (fp32 or bf16) is widened by Cast and stored by CastLike, so one body serves both; an int8 state
    needs its own body (decoding and encoding its rows).
    """
    if int8_state and not gated:
        raise ValueError("an int8 state needs a gated scan (docs/op_contract.md, State dtype)")
    w = NodeWriter("")
    f32 = TensorProto.FLOAT
    zero, one = w.const(0.0, np.float32, "zero"), w.const(1.0, np.float32, "one")
    eps = w.attr_const("eps", onnx.AttributeProto.FLOAT, "eps")

    shape_q, shape_v = w.op("Shape", "q_feat"), w.op("Shape", "v")
    B, T, H, F = (w.dims(shape_q, i, i + 1) for i in range(4))
    Dv = w.dims(shape_v, 3, 4)
    one_i = w.ints(1)
    Dv1 = w.op("Add", Dv, one_i)
    C = w.op("Min", T, w.ints(chunk))
    N = w.op("Div", w.op("Add", T, w.op("Sub", C, one_i)), C)
    Tp = w.op("Mul", N, C)
    pad = w.op("Sub", Tp, T)
    BH = w.op("Mul", B, H)

    qh = w.op("Transpose", w.op("Cast", "q_feat", to=f32), perm=[0, 2, 1, 3])  # [B, H, T, F]
    kh = w.op("Transpose", w.op("Cast", "k_feat", to=f32), perm=[0, 2, 1, 3])
    vh = w.op("Transpose", w.op("Cast", "v", to=f32), perm=[0, 2, 1, 3])
    ones = w.op("ConstantOfShape", concat_ints(w, [B, H, T, one_i]), value=helper.make_tensor("v1", f32, [1], [1.0]))
    vh = w.op("Concat", vh, ones, axis=-1)  # value' = [v, 1]
    if gated:
        gh = w.op("Transpose", w.op("Cast", "g", to=f32), perm=[0, 2, 1])  # [B, H, T]
        kh = w.op("Mul", kh, w.op("Unsqueeze", w.op("Sub", one, gh), w.ints(-1)))  # key' = (1 - g) k
        log_g = w.op("Log", gh)
    else:
        log_g = w.op("ConstantOfShape", concat_ints(w, [B, H, T]), value=helper.make_tensor("v0", f32, [1], [0.0]))

    # Pad T up to N*C: padding steps have g = 1 and q = k = v = 0, so they leave the state unchanged.
    zeros6 = w.ints(0, 0, 0, 0, 0, 0)
    pads4 = concat_ints(w, [zeros6, pad, w.ints(0)])
    pads3 = concat_ints(w, [w.ints(0, 0, 0, 0, 0), pad])
    qh, kh, vh = (w.op("Pad", x, pads4) for x in (qh, kh, vh))
    log_g = w.op("Pad", log_g, pads3)

    def chunks(x, last):  # [B, H, Tp, last] -> [N, BH, C, last]
        return w.op("Transpose", w.op("Reshape", x, concat_ints(w, [BH, N, C, last])), perm=[1, 0, 2, 3])

    qc, kc, vc = chunks(qh, F), chunks(kh, F), chunks(vh, Dv1)
    a = w.op("Transpose", w.op("Reshape", log_g, concat_ints(w, [BH, N, C])), perm=[1, 0, 2])  # [N, BH, C]

    # seg[..., t, i] = sum_{i < j <= t} a_j (t >= i), -inf above the diagonal
    c_scalar = w.op("Squeeze", C, w.ints(0))
    idx = w.op("Range", w.const(0, np.int64), c_scalar, w.const(1, np.int64))
    row = w.op("Unsqueeze", idx, w.ints(1))
    col = w.op("Unsqueeze", idx, w.ints(0))
    x = w.op("Expand", w.op("Unsqueeze", a, w.ints(-1)), concat_ints(w, [N, BH, C, C]))
    x = w.op("Where", w.op("Greater", row, col), x, zero)
    seg = w.op("CumSum", x, w.const(-2, np.int64))
    seg = w.op("Where", w.op("Less", row, col), w.const(-np.inf, np.float32, "neg_inf"), seg)

    scores = w.op("Mul", w.op("MatMul", qc, w.op("Transpose", kc, perm=[0, 1, 3, 2])), w.op("Exp", seg))
    intra = w.op("MatMul", scores, vc)  # [N, BH, C, Dv+1]
    last = w.op("Sub", c_scalar, w.const(1, np.int64))
    to_end = w.op("Exp", w.op("Gather", seg, last, axis=2))  # [N, BH, C]
    updates = w.op("MatMul", w.op("Transpose", w.op("Mul", kc, w.op("Unsqueeze", to_end, w.ints(-1))), perm=[0, 1, 3, 2]), vc)
    from_start = w.op("Exp", w.op("CumSum", a, w.const(-1, np.int64)))  # [N, BH, C]
    chunk_decay = w.op("Unsqueeze", w.op("Gather", from_start, last, axis=2), w.ints(-1, -2))  # [N, BH, 1, 1]
    qd = w.op("Mul", qc, w.op("Unsqueeze", from_start, w.ints(-1)))

    s0 = int8_state_to_float(w, "initial_state") if int8_state else w.op("Cast", "initial_state", to=f32)
    s0 = w.op("Reshape", s0, concat_ints(w, [BH, F, Dv1]))
    s_final, inter = w.op("Scan", s0, qd, updates, chunk_decay, outputs=2, num_scan_inputs=3, body=_chunk_scan_body())

    o = w.op("Add", intra, inter)
    o = w.op("Reshape", w.op("Transpose", o, perm=[1, 0, 2, 3]), concat_ints(w, [BH, Tp, Dv1]))
    o = w.op("Slice", o, w.ints(0), T, w.ints(1))
    num = w.op("Slice", o, w.ints(0), Dv, w.ints(2))
    den = w.op("Squeeze", w.op("Slice", o, Dv, Dv1, w.ints(2)), w.ints(2))
    out = bounded_readout_nodes(w, num, den, eps)
    out = w.op("Transpose", w.op("Reshape", out, concat_ints(w, [B, H, T, Dv])), perm=[0, 2, 1, 3])
    w.nodes.append(helper.make_node("CastLike", [out, "v"], ["out"], name="n_out"))
    s_final = w.op("Reshape", s_final, concat_ints(w, [B, H, F, Dv1]))
    # the state is stored in initial_state's dtype (fp32, bf16 or int8 rows), rounded once here
    if int8_state:
        w.nodes.append(helper.make_node("Identity", [float_state_to_int8(w, s_final)], ["final_state"], name="n_state"))
    else:
        w.nodes.append(helper.make_node("CastLike", [s_final, "initial_state"], ["final_state"], name="n_state"))

    fn = helper.make_function(
        DOMAIN, OP_TYPE, INPUTS, OUTPUTS, w.nodes, [helper.make_opsetid("", opset)],
        attributes=list(PLUGIN_ATTRIBUTES),
        doc_string="rfa::CausalGatedScan v1 (docs/op_contract.md): portable chunked body.",
    )
    fn.attribute_proto.append(helper.make_attribute("eps", DEFAULT_EPS))
    fn.overload = overload_of(gated, int8_state)
    return fn
