"""The ONNX schema of rfa::CausalGatedScan, registered in-process so onnxscript can emit the node and the
checker can validate it. Attributes are kept in step with the local function's."""

import onnx
from onnx import helper
from onnx.defs import OpSchema

from ..ops.causal_gated_scan import DEFAULT_EPS
from ..format.scan_op import DOMAIN, OP_TYPE, OP_VERSION, PLUGIN_ATTRIBUTES

_ACTIVATIONS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_STATES = ["tensor(float)", "tensor(bfloat16)", "tensor(int8)"]


def register_scan_schema() -> None:
    """Idempotent."""
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    attributes = [OpSchema.Attribute("eps", helper.make_attribute("eps", DEFAULT_EPS), "normaliser constant")]
    attributes += [OpSchema.Attribute(k, helper.make_attribute(k, v), "TensorRT plugin lookup") for k, v in PLUGIN_ATTRIBUTES.items()]
    schema = OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        doc="Causal gated random-feature scan; see docs/op_contract.md.",
        inputs=[
            param("q_feat", "A"),
            param("k_feat", "A"),
            param("v", "A"),
            param("g", "A", param_option=optional),
            param("initial_state", "S", param_option=optional),
        ],
        outputs=[param("out", "A"), param("final_state", "S")],
        type_constraints=[("A", _ACTIVATIONS, "activations"), ("S", _STATES, "state: fp32, or bf16 or int8-row storage")],
        attributes=attributes,
    )
    onnx.defs.register_schema(schema)
