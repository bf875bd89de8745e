"""Encoder-decoder decoding with one API over PyTorch and onnxruntime: encode each source once into the decoder
layers' cross states, then greedy, sampled or beam-search decoding. Beam search reorders only the self states;
the cross states stay one per source (the decoder reads them for the source's contiguous rows), never copied
per beam."""

from .backend import Seq2SeqBackend
from .decoder import Seq2SeqDecoder, Seq2SeqState, Seq2SeqTokenizer
from .loading import SEQ2SEQ_BACKENDS, open_seq2seq_backend
from .onnxruntime_backend import OnnxRuntimeSeq2SeqBackend
from .torch_backend import TorchSeq2SeqBackend

__all__ = ["OnnxRuntimeSeq2SeqBackend", "SEQ2SEQ_BACKENDS", "Seq2SeqBackend", "Seq2SeqDecoder", "Seq2SeqState",
           "Seq2SeqTokenizer", "TorchSeq2SeqBackend", "open_seq2seq_backend"]
