"""open_backend: one entry point for the CLI and users."""

from pathlib import Path
from typing import Union

from .backend import DecoderBackend

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def open_backend(kind: str, source: Union[str, Path, None] = None, checkpoint: Union[str, Path, None] = None,
                 device: str = "cpu", **options) -> DecoderBackend:
    """torch: `checkpoint` (or `source` when it is a .pt file). onnxruntime: the export directory `source`
    (device cpu or cuda). tensorrt: the export directory `source` plus options of TensorRTBackend."""
    if kind == "torch":
        path = checkpoint or source
        if path is None or Path(path).is_dir():
            raise ValueError("the torch backend runs a checkpoint: pass --checkpoint MODEL.pt")
        from .torch_backend import TorchBackend

        return TorchBackend(path, device=device, **options)
    if source is None:
        raise ValueError(f"the {kind} backend needs an export directory")
    if kind == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(source, device=device, **options)
    if kind == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(source, **options)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
