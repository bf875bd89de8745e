"""RFA model layers: feature maps, attention, the language model and its checkpoint file."""

from .attention import CausalRFASelfAttention, RFAAttention
from .config import ConfigError, RFAConfig
from .feature_maps import RandomFeatureMap
from .lm import RFALanguageModel

__all__ = ["CausalRFASelfAttention", "ConfigError", "RFAAttention", "RFAConfig", "RFALanguageModel", "RandomFeatureMap"]
