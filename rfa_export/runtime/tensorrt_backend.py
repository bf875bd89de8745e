"""TensorRT backend: builds (and caches) an engine from OUT_DIR/model.onnx with our plugin library loaded,
then runs steps with the state resident on the GPU (torch CUDA tensors as buffers).

Written against the TensorRT Python API (10.x/11.x). TensorRT cannot be installed on the machines this
project is developed on, so the parts that need it are untested here; the profile and cache-key logic
below are plain Python and tested.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..format.export_dir import open_export
from ..format.lowerings import LOWERINGS
from ..format.metadata import ExportMetadata
from .backend import DecoderBackend, InputError

Shapes = Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]
PLUGIN_ENV = "RFA_TRT_PLUGIN"


class TensorRTUnavailable(RuntimeError):
    pass


def optimization_profile(spec: ExportMetadata, max_batch: int, max_sequence: int, opt_batch: int = 1,
                         opt_sequence: int = 1) -> Shapes:
    """(min, opt, max) shape of every input. Sequence-like axes (sequence, total_sequence_length) share the
    sequence range; every state tensor follows the batch range."""
    if not (1 <= opt_batch <= max_batch and 1 <= opt_sequence <= max_sequence):
        raise ValueError(f"need 1 <= opt <= max (batch {opt_batch}/{max_batch}, sequence {opt_sequence}/{max_sequence})")
    ranges = {"batch": (1, opt_batch, max_batch), "sequence": (1, opt_sequence, max_sequence),
              "total_sequence_length": (1, opt_sequence, max_sequence)}
    shapes: Shapes = {}
    for t in list(spec.inputs) + [*spec.state, *spec.extra_state]:
        name = getattr(t, "input", None) or t.name
        dims = [ranges[d] if isinstance(d, str) else (d, d, d) for d in t.shape]
        shapes[name] = tuple(tuple(r[i] for r in dims) for i in range(3))
    return shapes


def engine_cache_key(model_path: Path, plugin_library: Optional[Path], trt_version: str, device_name: str,
                     profile: Shapes) -> str:
    """Changes whenever anything that shapes the engine changes: the model, the plugin, TensorRT, the GPU,
    the profile."""
    h = hashlib.sha256()
    for path in (model_path, plugin_library):
        if path is not None:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        h.update(b"|")
    h.update(json.dumps([trt_version, device_name, sorted(profile.items())], default=list).encode())
    return h.hexdigest()[:20]


PLUGIN_FILE = "librfa_trt_plugin.so"
INSTALLED_PLUGIN = Path(__file__).resolve().parents[1] / "lib" / PLUGIN_FILE  # pip install . with TensorRT headers


def find_plugin_library(explicit: Union[str, Path, None]) -> Path:
    """--plugin-library, then $RFA_TRT_PLUGIN, then the one installed with the package."""
    path = explicit or os.environ.get(PLUGIN_ENV) or (INSTALLED_PLUGIN if INSTALLED_PLUGIN.is_file() else None)
    if not path:
        raise ValueError(f"the model's scans are rfa::CausalGatedScan plugin nodes: pass the plugin library "
                         f"(--plugin-library build/librfa_trt_plugin.so or ${PLUGIN_ENV}); this install has none "
                         f"(pip install . with TensorRT headers builds it: TensorRT_ROOT=...)")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"plugin library {path} not found")
    return path


class TensorRTBackend(DecoderBackend):
    name = "tensorrt"

    def __init__(self, out_dir: Union[str, Path], plugin_library: Union[str, Path, None] = None,
                 engine_cache: Union[str, Path, None] = None, max_batch: int = 64, max_sequence: int = 4096,
                 opt_batch: int = 1, opt_sequence: int = 1, workspace_bytes: int = 4 << 30, device_id: int = 0,
                 device: str = "cuda"):
        if device != "cuda":
            raise ValueError(f"the tensorrt backend runs on cuda (pick the GPU with device_id), not {device!r}")
        out_dir = Path(out_dir)
        export = open_export(out_dir)
        try:
            import tensorrt as trt
        except ImportError:
            raise TensorRTUnavailable("TensorRT not installed (pip install 'rfa-export[trt]' with NVIDIA's index)") from None
        import torch

        self.spec = export.meta
        self.tokenizer_path = export.tokenizer_path
        self.trt, self.torch = trt, torch
        self.device = torch.device("cuda", device_id)
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        plugin = None
        if LOWERINGS[self.spec.lowering].needs_plugin:
            plugin = find_plugin_library(plugin_library)
            trt.get_plugin_registry().load_library(str(plugin))
        self.profile = optimization_profile(self.spec, max_batch, max_sequence, opt_batch, opt_sequence)
        model_path = export.model_path
        cache = Path(engine_cache) if engine_cache else out_dir / "trt_engines"
        key = engine_cache_key(model_path, plugin, trt.__version__, torch.cuda.get_device_name(device_id), self.profile)
        engine_path = cache / f"{key}.engine"
        if engine_path.is_file():
            serialized = engine_path.read_bytes()
        else:
            serialized = self._build(model_path, workspace_bytes)
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(serialized)
            os.replace(tmp, engine_path)
        self.engine_path = engine_path
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        self._free: Dict[Tuple[int, ...], List] = {}

    def _build(self, model_path: Path, workspace_bytes: int) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
            parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT's ONNX parser rejected {model_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in self.profile.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the engine (see the log above)")
        return bytes(serialized)

    def _run(self, input_ids, attention_mask, position_ids, state):
        torch = self.torch
        B, T = input_ids.shape
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.needs_positions:
            feeds["position_ids"] = position_ids
        tensors = {k: torch.as_tensor(np.ascontiguousarray(v, dtype=np.int64)).to(self.device, non_blocking=True) for k, v in feeds.items()}
        for spec in self.spec.extra_state:
            tensors[spec.input] = torch.zeros([B, *spec.shape[1:]], device=self.device)
        for spec, value in zip(self.spec.state, state):
            tensors[spec.input] = value
        outputs = [self._take(tuple(v.shape)) for v in state]
        logits = torch.empty((B, T, self.vocab_size), dtype=torch.float32, device=self.device)
        for name, t in tensors.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        self.context.set_tensor_address("logits", logits.data_ptr())
        for spec, t in zip(self.spec.state, outputs):
            self.context.set_tensor_address(spec.output, t.data_ptr())
        for spec in self.spec.extra_state:
            scratch = torch.empty([B, *spec.shape[1:]], device=self.device)
            self.context.set_tensor_address(spec.output, scratch.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        with torch.cuda.stream(self.stream):
            host_logits = logits.cpu()
        for value in state:
            self._free.setdefault(tuple(value.shape), []).append(value)
        return host_logits.numpy(), outputs

    def _take(self, shape):
        pool = self._free.get(shape)
        return pool.pop() if pool else self.torch.empty(shape, dtype=self._state_dtype, device=self.device)

    @property
    def _state_dtype(self):
        return getattr(self.torch, self.spec.state[0].dtype)  # config.state_dtype

    def to_host(self, state) -> List[np.ndarray]:
        return [s.detach().to("cpu", self.torch.float32).numpy() for s in state]

    def from_host(self, arrays: Sequence[np.ndarray]):
        return [self.torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32)).to(self.device, self._state_dtype)
                for a in arrays]

    def select(self, state, indices):
        idx = self.torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        return [s.index_select(0, idx) for s in state]

    def concat(self, states):
        return [self.torch.cat(parts, 0) for parts in zip(*states)]

    def state_shapes(self, state):
        try:
            return [(tuple(t.shape), str(t.dtype).replace("torch.", "") if t.device == self.device else "not on the GPU")
                    for t in state]
        except AttributeError:
            raise InputError(f"a TensorRT state is a list of torch CUDA tensors, got {type(state).__name__}") from None
