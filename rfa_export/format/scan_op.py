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

__all__ = ["DEFAULT_EPS", "DOMAIN", "INPUTS", "OP_TYPE", "OP_VERSION", "OUTPUTS", "OVERLOAD", "PLUGIN_ATTRIBUTES"]
