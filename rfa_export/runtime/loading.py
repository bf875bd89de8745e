"""open_backend: one entry point for the CLI and users, over the registry of decoding backends."""

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

from .backend import DecoderBackend


@dataclass(frozen=True)
class BackendEntry:
    """A decoding backend: its class (imported on first use, so that torch and TensorRT load only when asked
    for), what it opens ("export": a directory rfa-export wrote; "checkpoint": a .pt file) and the device it
    runs on unless told otherwise. Its options are its constructor's keyword arguments."""

    module: str
    class_name: str
    opens: str
    default_device: str

    def backend_class(self):
        return getattr(importlib.import_module(self.module, __package__), self.class_name)


BACKENDS: Dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(".onnxruntime_backend", "OnnxRuntimeBackend", "export", "cpu"),
    "torch": BackendEntry(".torch_backend", "TorchBackend", "checkpoint", "cpu"),
    "tensorrt": BackendEntry(".tensorrt_backend", "TensorRTBackend", "export", "cuda"),
}


def open_backend(kind: str, source: Union[str, Path, None] = None, checkpoint: Union[str, Path, None] = None,
                 device: Optional[str] = None, **options) -> DecoderBackend:
    """The language-model backend `kind` (BACKENDS) on `device` (default: the backend's own). An export
    backend opens the export directory `source`; the torch backend `checkpoint`, or `source` when it is a .pt
    file. `options` are the backend class's keyword arguments; one it does not take is an error, not ignored."""
    return open_registered(BACKENDS, kind, source, checkpoint, device, options)


def open_registered(registry: Dict[str, BackendEntry], kind: str, source, checkpoint, device: Optional[str],
                    options: dict):
    """open_backend over any registry of backends (the encoder-decoder's has its own)."""
    entry = registry.get(kind)
    if entry is None:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(registry)}")
    if entry.opens == "checkpoint":
        path = checkpoint or source
        if path is None or Path(path).is_dir():
            raise ValueError(f"the {kind} backend runs a checkpoint: pass --checkpoint MODEL.pt")
    else:
        if source is None:
            raise ValueError(f"the {kind} backend needs an export directory")
        if checkpoint is not None:
            raise ValueError(f"the {kind} backend runs an export, which carries its own weights: no checkpoint")
        path = source
    cls = entry.backend_class()
    taken = [name for name in inspect.signature(cls).parameters if name != "device"][1:]  # after the source
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ValueError(f"the {kind} backend takes no option {', '.join(unknown)} (it takes {', '.join(taken)})")
    return cls(path, device=entry.default_device if device is None else device, **options)
