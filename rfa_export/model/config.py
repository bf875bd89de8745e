"""RFAConfig: the hyper-parameters of an RFA decoder-only language model."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict

from ..ops.causal_gated_scan import DEFAULT_EPS
from .feature_maps import FEATURE_MAPS

POSITIONAL_SCHEMES = ("sinusoidal", "none")


class ConfigError(ValueError):
    """A configuration that cannot describe a model."""


@dataclass(frozen=True)
class RFAConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ffn: int = 1024
    feature_map: str = "gaussian"  # "gaussian" (sin/cos) or "arccos" (ReLU)
    num_features: int = 32  # D random features per head; F = 2D for gaussian, D for arccos
    orthogonal_features: bool = True
    gated: bool = True
    positional: str = "sinusoidal"  # absolute sinusoids of position_ids: any length
    tie_embeddings: bool = True
    dropout: float = 0.0
    normaliser_eps: float = DEFAULT_EPS
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = f.type
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                ok = True
            if not ok:
                raise ConfigError(f"config field {f.name} must be {want.__name__}, got {type(value).__name__} {value!r}")
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ffn", "num_features"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(f"feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}")
        if self.positional not in POSITIONAL_SCHEMES:
            raise ConfigError(f"positional must be one of {POSITIONAL_SCHEMES}, got {self.positional!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.normaliser_eps > 0.0:
            raise ConfigError(f"normaliser_eps must be positive, got {self.normaliser_eps}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def feature_size(self) -> int:
        """F, the size of phi(x) per head."""
        return 2 * self.num_features if self.feature_map == "gaussian" else self.num_features

    @property
    def state_shape(self) -> tuple:
        """Per-layer state without the batch axis: (H, F, Dv + 1)."""
        return (self.n_heads, self.feature_size, self.head_dim + 1)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "RFAConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config has unknown fields: {', '.join(map(str, unknown))}")
        return cls(**data)
