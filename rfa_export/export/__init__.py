"""PyTorch -> ONNX: one stateful graph per model with rfa::CausalGatedScan, lowered three ways."""

from .lm_export import export_checkpoint, language_model_to_onnx, write_export
from .lowering import LOWERINGS
from ..format.export_dir import open_export
from ..format.metadata import ExportMetadata
from .module_export import ExportError, export_module

__all__ = ["LOWERINGS", "ExportError", "ExportMetadata", "export_checkpoint", "export_module",
           "language_model_to_onnx", "open_export", "write_export"]
