"""open_seq2seq_backend: one entry point for the translate CLI and users, over the encoder-decoder's registry
of backends (a new one is one entry in SEQ2SEQ_BACKENDS)."""

from pathlib import Path
from typing import Dict, Optional, Union

from ..loading import BackendEntry, open_registered
from .backend import Seq2SeqBackend

SEQ2SEQ_BACKENDS: Dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(".seq2seq.onnxruntime_backend", "OnnxRuntimeSeq2SeqBackend", "export", "cpu"),
    "torch": BackendEntry(".seq2seq.torch_backend", "TorchSeq2SeqBackend", "checkpoint", "cpu"),
}


def open_seq2seq_backend(kind: str, source: Union[str, Path, None] = None, checkpoint: Union[str, Path, None] = None,
                         device: Optional[str] = None, **options) -> Seq2SeqBackend:
    """The encoder-decoder backend `kind` (SEQ2SEQ_BACKENDS), opened as open_backend opens one."""
    return open_registered(SEQ2SEQ_BACKENDS, kind, source, checkpoint, device, options)
