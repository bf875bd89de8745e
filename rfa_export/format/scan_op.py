"""The ONNX identity of rfa::CausalGatedScan (docs/op_contract.md), shared by the exporter, its lowerings,
the runtimes and the tools."""

from .config import DEFAULT_EPS

DOMAIN = "rfa"
OP_TYPE = "CausalGatedScan"
OP_VERSION = 1
INPUTS = ["q_feat", "k_feat", "v", "g", "initial_state"]
OUTPUTS = ["out", "final_state"]
PLUGIN_ATTRIBUTES = {"plugin_namespace": "rfa", "plugin_version": "1"}  # TensorRT's parser looks the plugin up by these
OVERLOAD = {True: "gated", False: "ungated"}  # the local function's overload per gating
INT8_STATE_OVERLOAD = "gated_int8_state"  # the gated body for an int8-row state (only gated models take one)


def overload_of(gated: bool, int8_state: bool) -> str:
    """The local function's overload for a node: its gating, and whether its state is int8 rows."""
    return INT8_STATE_OVERLOAD if int8_state else OVERLOAD[gated]

__all__ = ["DEFAULT_EPS", "DOMAIN", "INPUTS", "INT8_STATE_OVERLOAD", "OP_TYPE", "OP_VERSION", "OUTPUTS", "OVERLOAD",
           "PLUGIN_ATTRIBUTES", "overload_of"]
