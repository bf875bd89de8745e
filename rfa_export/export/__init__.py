"""PyTorch -> ONNX: one stateful graph per model with rfa::CausalGatedScan, lowered three ways."""

from .lm_export import export_checkpoint, language_model_to_onnx, write_export
from .lowering import LOWERINGS
from .metadata import ExportMetadata, read_export_dir
from .module_export import ExportError, export_module

__all__ = ["LOWERINGS", "ExportError", "ExportMetadata", "export_checkpoint", "export_module",
           "language_model_to_onnx", "read_export_dir", "write_export"]
