"""Step-wise decoding with one API over PyTorch, onnxruntime and TensorRT.

Importing this package does not import torch (the onnxruntime path runs without it): TorchBackend and
TensorRTBackend load on first use.
"""

from .backend import DecoderBackend, InputError, NonFiniteError
from .batch import ContinuousBatch
from .decoder import Decoder, DecodeState, GenerationResult, TokenEvent
from .loading import BACKENDS, open_backend
from .onnxruntime_backend import OnnxRuntimeBackend
from .sampling import SamplingParams
from .snapshot import load_snapshot, restore, save_snapshot, snapshot


__all__ = ["BACKENDS", "ContinuousBatch", "DecodeState", "Decoder", "DecoderBackend", "GenerationResult",
           "InputError", "NonFiniteError", "OnnxRuntimeBackend", "SamplingParams", "TensorRTBackend", "TokenEvent",
           "TorchBackend", "load_snapshot", "open_backend", "restore", "save_snapshot", "snapshot"]


def __getattr__(name):
    entry = next((e for e in BACKENDS.values() if e.class_name == name), None)
    if entry is not None:
        return entry.backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
