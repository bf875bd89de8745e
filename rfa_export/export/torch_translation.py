"""How torch.onnx turns torch.ops.rfa.causal_gated_scan into one rfa::CausalGatedScan node."""

from onnxscript import opset20 as op
from onnxscript.values import Opset

from ..ops.causal_gated_scan import DEFAULT_EPS
from ..format.scan_op import DOMAIN, OP_VERSION, PLUGIN_ATTRIBUTES
from .scan_schema import register_scan_schema

register_scan_schema()
_rfa = Opset(DOMAIN, OP_VERSION)


def zero_state_like(q, v):
    """[B, H, F, Dv + 1] fp32 zeros from the runtime shapes of q [B, T, H, F] and v [B, T, H, Dv]."""
    sq, sv = op.Shape(q), op.Shape(v)
    dv1 = op.Add(op.Slice(sv, [3], [4]), op.Constant(value_ints=[1]))
    shape = op.Concat(op.Slice(sq, [0], [1]), op.Slice(sq, [2], [4]), dv1, axis=0)
    return op.ConstantOfShape(shape)


def causal_gated_scan_to_onnx(q, k, v, g=None, initial_state=None, eps: float = DEFAULT_EPS):
    """A bare node; the exporter attaches the portable body as a local function afterwards (onnxscript
    would inline a scripted function). An absent initial state becomes explicit zeros, so the body needs
    only two variants: gated and ungated."""
    if initial_state is None:
        initial_state = zero_state_like(q, v)
    return _rfa.CausalGatedScan(q, k, v, g, initial_state, eps=float(eps), _outputs=2, **PLUGIN_ATTRIBUTES)


def translation_table():
    import torch

    import rfa_export.ops.causal_gated_scan  # noqa: F401  (registers the op)

    return {torch.ops.rfa.causal_gated_scan.default: causal_gated_scan_to_onnx}
