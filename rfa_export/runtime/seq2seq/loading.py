"""open_seq2seq_backend: one entry point for the translate CLI and users."""

from pathlib import Path

from .backend import Seq2SeqBackend
from .onnxruntime_backend import OnnxRuntimeSeq2SeqBackend
from .torch_backend import TorchSeq2SeqBackend


def open_seq2seq_backend(kind: str, source=None, checkpoint=None, device: str = "cpu", **options) -> Seq2SeqBackend:
    if kind == "torch":
        path = checkpoint or source
        if path is None or Path(path).is_dir():
            raise ValueError("the torch backend runs a checkpoint: pass --checkpoint MODEL.pt")
        return TorchSeq2SeqBackend(path, device=device, **options)
    if kind == "onnxruntime":
        if source is None:
            raise ValueError("the onnxruntime backend needs an export directory")
        return OnnxRuntimeSeq2SeqBackend(source, device=device, **options)
    raise ValueError(f"unknown backend {kind!r} for an encoder-decoder; choose onnxruntime or torch")
