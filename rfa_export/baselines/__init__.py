"""Reference models that rfa-export is measured against (not exported)."""

from .softmax_lm import SoftmaxLanguageModel

__all__ = ["SoftmaxLanguageModel"]
