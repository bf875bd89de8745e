"""RFAConfig (a decoder-only language model) and RFASeq2SeqConfig (an encoder-decoder): every field type- and
range-checked.

The limits are in one table (LIMITS) and documented in docs/validation.md. A checkpoint or an export whose
config breaks one is refused before anything is built or allocated.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from .feature_maps import FEATURE_MAPS

DEFAULT_EPS = 1e-3  # the op's normaliser constant (docs/op_contract.md)
POSITIONAL_SCHEMES = ("sinusoidal", "none")
# dtypes the recurrent state may be kept in between calls (docs/op_contract.md, "State dtype")
STATE_DTYPES = ("float32", "bfloat16", "int8")
# their ONNX element types (onnx.TensorProto.FLOAT, BFLOAT16, INT8), for graphs and IO bindings built around a state
STATE_ONNX_TYPES = {"float32": 1, "bfloat16": 16, "int8": 3}
# TensorRT's largest tensor volume and the kernels' int32 element offsets; also int32 token ids (genai, TensorRT)
MAX_TENSOR_ELEMENTS = 2**31 - 1


class ConfigError(ValueError):
    """A configuration that cannot describe a model; the message names the field and the allowed range."""


# field -> (low, high, low inclusive, high inclusive, why)
LIMITS: Dict[str, Tuple[float, float, bool, bool, str]] = {
    "vocab_size": (1, MAX_TENSOR_ELEMENTS, True, True, "token ids are int32 in TensorRT and onnxruntime-genai"),
    "d_model": (1, 65536, True, True, "bounds the memory a hand-edited config can ask for"),
    "n_heads": (1, 65536, True, True, "a divisor of d_model"),
    "n_layers": (1, 1024, True, True, "bounds the work a hand-edited config can ask for"),
    "d_ffn": (1, 262144, True, True, "bounds the memory a hand-edited config can ask for"),
    "num_features": (1, 4096, True, True, "the state is H x F x (head_dim + 1) floats per layer and sequence"),
    "dropout": (0.0, 1.0, True, False, "a probability; 1 would drop everything"),
    "normaliser_eps": (1e-6, 1.0, True, True, "the readout is bounded by 1/eps (docs/op_contract.md); past 1e6 "
                       "activations overflow"),
    "layer_norm_eps": (1e-12, 1.0, True, True, "smaller values round to 0 in float32, and 0 divides by zero on a "
                       "constant input"),
    "max_source_length": (1, 1 << 20, True, True, "the longest source the encoder takes (sources are read whole)"),
}
# fields of the encoder-decoder config with the same limits as a language-model field
LIMIT_OF = {"src_vocab_size": "vocab_size", "tgt_vocab_size": "vocab_size", "n_encoder_layers": "n_layers",
            "n_decoder_layers": "n_layers"}


def _interval(low, high, low_in, high_in) -> str:
    return f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_range(owner: str, name: str, value) -> None:
    """Raise ConfigError unless `value` lies in LIMITS[name] (or the field's LIMIT_OF) and is finite."""
    low, high, low_in, high_in, _ = LIMITS[LIMIT_OF.get(name, name)]
    finite = not isinstance(value, float) or math.isfinite(value)
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    if not (finite and above and below):
        kind = "an integer" if isinstance(value, int) else "a finite number"
        raise ConfigError(f"{owner} field {name} must be {kind} in {_interval(low, high, low_in, high_in)}, got {value!r}")


def check_field_types(obj) -> None:
    """Exact types per dataclass field (bool is not an int; an int is accepted for a float and converted)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        want = f.type
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))
            ok = True
        if not ok:
            raise ConfigError(f"config field {f.name} must be {want.__name__}, got {type(value).__name__} {value!r}")


def check_tensor_size(name: str, shape) -> None:
    n = 1
    for d in shape:
        n *= d
    if n > MAX_TENSOR_ELEMENTS:
        raise ConfigError(f"config implies {name} of shape {tuple(shape)}: {n:,} elements, more than "
                          f"{MAX_TENSOR_ELEMENTS:,} (the largest tensor TensorRT and the kernels index)")


def check_state_dtype(state_dtype: str, gated: bool) -> None:
    if state_dtype not in STATE_DTYPES:
        raise ConfigError(f"config field state_dtype must be one of {', '.join(STATE_DTYPES)}, got {state_dtype!r}")
    if state_dtype != "float32" and not gated:
        raise ConfigError(f"config field state_dtype {state_dtype!r} needs a gated model: an ungated state sums "
                          "without forgetting, and reduced-precision storage loses the small updates (BENCHMARKS.md, "
                          "State dtype)")


def state_shape_of(n_heads: int, feature_size: int, head_dim: int, state_dtype: str) -> tuple:
    """A layer's state without the batch axis: (H, F, Dv + 1), or (H, F, Dv + 2) for int8 rows (the row
    exponent in the last column)."""
    return (n_heads, feature_size, head_dim + (2 if state_dtype == "int8" else 1))


class _AttentionModelConfig:
    """What the language-model and encoder-decoder configs share: the attention's field checks, the shapes
    they imply, and the dict form. Subclasses are frozen dataclasses with d_model, n_heads, d_ffn, feature_map,
    num_features, positional and state_dtype."""

    def _check_attention_fields(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"config field d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(f"config field feature_map must be one of {', '.join(FEATURE_MAPS)}, got {self.feature_map!r}")
        if self.positional not in POSITIONAL_SCHEMES:
            raise ConfigError(f"config field positional must be one of {', '.join(POSITIONAL_SCHEMES)}, got {self.positional!r}")
        if self.positional == "sinusoidal" and self.d_model < 2:
            raise ConfigError(f"config field positional 'sinusoidal' needs d_model >= 2 (a sin/cos pair), got {self.d_model}")

    def _check_layer_sizes(self) -> None:
        check_tensor_size("attention projections", (self.d_model, self.d_model))
        check_tensor_size("ffn weights", (self.d_ffn, self.d_model))
        check_tensor_size("phi.w_tilde", (self.n_heads, self.num_features, self.head_dim))
        check_tensor_size("the state of one layer and sequence", self.state_shape)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def feature_size(self) -> int:
        """F, the size of phi(x) per head."""
        return FEATURE_MAPS[self.feature_map].feature_size(self.num_features)

    @property
    def state_shape(self) -> tuple:
        """A (decoder) layer's self state without the batch axis, stored as state_dtype."""
        return state_shape_of(self.n_heads, self.feature_size, self.head_dim, self.state_dtype)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any):
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a dict, got {type(data).__name__}")
        if not all(isinstance(k, str) for k in data):
            raise ConfigError("config keys must be strings")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"config has unknown fields: {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class RFAConfig(_AttentionModelConfig):
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
    state_dtype: str = "float32"  # what the state is stored in between calls; accumulation stays float32

    def __post_init__(self) -> None:
        check_field_types(self)
        check_state_dtype(self.state_dtype, self.gated)
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ffn", "num_features", "dropout",
                     "normaliser_eps", "layer_norm_eps"):
            check_range("config", name, getattr(self, name))
        self._check_attention_fields()
        check_tensor_size("embed.weight", (self.vocab_size, self.d_model))
        self._check_layer_sizes()


@dataclass(frozen=True)
class RFASeq2SeqConfig(_AttentionModelConfig):
    """An encoder-decoder: a non-causal RFA encoder, a decoder of causal gated RFA self-attention and RFA cross
    attention over the encoder's output (summarised once per source into a fixed-size state per layer).
    Byte-level by default: ids 0-255 are bytes, 256 begins and 257 ends a target."""

    src_vocab_size: int = 258
    tgt_vocab_size: int = 258
    shared_vocab: bool = True  # one embedding for source and target (needs equal vocabularies)
    d_model: int = 256
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ffn: int = 1024
    feature_map: str = "gaussian"
    num_features: int = 32
    orthogonal_features: bool = True
    gated: bool = True
    positional: str = "sinusoidal"  # "none" leaves the encoder order-blind: only for order-free tasks
    tie_embeddings: bool = True  # the output projection is the target embedding
    dropout: float = 0.0
    normaliser_eps: float = DEFAULT_EPS
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 256
    eos_token_id: int = 257
    max_source_length: int = 4096
    state_dtype: str = "float32"  # the decoder's self states between calls; cross states stay float32

    def __post_init__(self) -> None:
        check_field_types(self)
        check_state_dtype(self.state_dtype, self.gated)
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers",
                     "d_ffn", "num_features", "dropout", "normaliser_eps", "layer_norm_eps", "max_source_length"):
            check_range("config", name, getattr(self, name))
        self._check_attention_fields()
        if self.shared_vocab and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError(f"config field shared_vocab needs src_vocab_size == tgt_vocab_size, got "
                              f"{self.src_vocab_size} and {self.tgt_vocab_size}")
        for name in ("bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.tgt_vocab_size:
                raise ConfigError(f"config field {name} must be an integer in [0, {self.tgt_vocab_size}), got "
                                  f"{getattr(self, name)}")
        if self.bos_token_id == self.eos_token_id:
            raise ConfigError("config fields bos_token_id and eos_token_id must differ")
        for name, vocab in (("source embedding", self.src_vocab_size), ("target embedding", self.tgt_vocab_size)):
            check_tensor_size(name, (vocab, self.d_model))
        self._check_layer_sizes()

    @property
    def cross_state_shape(self) -> tuple:
        """A decoder layer's cross state without the batch axis: (H, F, Dv + 1) float32."""
        return state_shape_of(self.n_heads, self.feature_size, self.head_dim, "float32")
