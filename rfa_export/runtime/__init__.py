"""Step-wise decoding with one API over PyTorch, onnxruntime and TensorRT."""

from .backend import DecoderBackend, InputError
from .batch import ContinuousBatch
from .decoder import Decoder, DecodeState, GenerationResult, TokenEvent
from .loading import BACKENDS, open_backend
from .onnxruntime_backend import OnnxRuntimeBackend
from .sampling import SamplingParams
from .snapshot import load_snapshot, restore, save_snapshot, snapshot
from .torch_backend import TorchBackend

__all__ = ["BACKENDS", "ContinuousBatch", "DecodeState", "Decoder", "DecoderBackend", "GenerationResult",
           "InputError", "OnnxRuntimeBackend", "SamplingParams", "TokenEvent", "TorchBackend", "load_snapshot",
           "open_backend", "restore", "save_snapshot", "snapshot"]
