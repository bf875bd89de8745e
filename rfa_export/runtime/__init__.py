"""Step-wise decoding with one API over PyTorch, onnxruntime and TensorRT."""

from .backend import DecoderBackend, InputError
from .onnxruntime_backend import OnnxRuntimeBackend
from .torch_backend import TorchBackend

__all__ = ["DecoderBackend", "InputError", "OnnxRuntimeBackend", "TorchBackend"]
