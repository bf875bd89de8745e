"""Reference models that rfa-export is measured against (not exported)."""

from .softmax_lm import SoftmaxLanguageModel
from .softmax_seq2seq import SoftmaxSeq2Seq

__all__ = ["SoftmaxLanguageModel", "SoftmaxSeq2Seq"]
