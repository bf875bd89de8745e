"""The lowerings of rfa::CausalGatedScan, registered once: the CLI's --lowering choices and help, the opsets an
export declares, the function that rewrites the graph (rfa_export/export/lowering.py, resolved on use so this
module needs no onnx) and whether TensorRT needs our plugin library for it."""

from dataclasses import dataclass
from typing import Dict

from .scan_op import DOMAIN, OP_VERSION


@dataclass(frozen=True)
class Lowering:
    name: str
    opsets: Dict[str, int]
    apply: str  # "module:function" taking and returning an onnx ModelProto whose scans are bare rfa nodes
    needs_plugin: bool  # TensorRT runs it only with librfa_trt_plugin.so loaded
    help: str


LOWERINGS: Dict[str, Lowering] = {
    low.name: low for low in (
        Lowering("plugin", {"": 20, DOMAIN: OP_VERSION}, "rfa_export.export.lowering:attach_local_functions", True,
                 "one rfa::CausalGatedScan node (TensorRT's parser swaps in our plugin) plus an ONNX local function of "
                 "standard ops that every runtime can run (default)"),
        Lowering("onnx", {"": 27}, "rfa_export.export.lowering:to_standard_linear_attention", False,
                 "the standard LinearAttention of opset 27 plus the normaliser"),
        Lowering("ort", {"": 20, "com.microsoft": 1}, "rfa_export.export.lowering:to_onnxruntime_linear_attention", False,
                 "com.microsoft.LinearAttention: onnxruntime's native CPU/CUDA kernels"),
    )
}
DEFAULT_LOWERING = "plugin"


def lowering(name: str) -> Lowering:
    try:
        return LOWERINGS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown lowering {name!r}; choose one of {', '.join(LOWERINGS)}") from None
