"""What an exported model says about itself: IO, state tensors, lowering, opsets, config and the digest of
its content (JSON, in the model's metadata_props and in a file beside it), so runtimes and tools need no
guessing. Every field is checked when it is read (docs/validation.md)."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .config import ConfigError, RFAConfig
from .lowerings import LOWERINGS

METADATA_KEY = "rfa_export"
METADATA_FILE = "rfa_export.json"
MODEL_FILE = "model.onnx"
DATA_FILE = MODEL_FILE + ".data"
FORMAT_NAME = "rfa-export/onnx"
FORMAT_VERSION = 2  # 2: the content digest (integrity); exports of version 1 are refused (re-export them)
TORCH_LOWERING = "torch"  # what the PyTorch backend reports: no graph, the checkpoint itself
DTYPES = ("fp32", "fp16", "bf16")
STATE_IN = "past_key_values.{}.recurrent_state"
STATE_OUT = "present.{}.recurrent_state"
GENAI_CONV_IN = "past_key_values.{}.conv_state"
GENAI_CONV_OUT = "present.{}.conv_state"


class MetadataError(ValueError):
    """An export directory or model whose rfa-export metadata is missing, malformed or inconsistent."""


@dataclass
class TensorSpec:
    name: str
    shape: List[Union[int, str]]
    dtype: str
    description: str = ""


@dataclass
class StateSpec:
    """One recurrent state tensor: fed as `input`, returned as `output`, same shape and dtype."""

    layer: int
    input: str
    output: str
    shape: List[Union[int, str]]
    dtype: str = "float32"
    initial_value: str = "zeros"
    layout: str = "[S | z]: S in columns 0..Dv-1, the normaliser z in column Dv (docs/op_contract.md)"


INT8_ROWS_LAYOUT = ("[S | z | e] int8 rows: codes of S in columns 0..Dv-1 and of z in column Dv, the row's exponent e "
                    "in column Dv+1; an entry is code * 2^e (docs/op_contract.md)")


@dataclass
class ExportMetadata:
    lowering: str
    dtype: str
    opsets: Dict[str, int]
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    state: List[StateSpec]
    config: Dict[str, Any] = field(default_factory=dict)
    producer: str = ""
    genai: bool = False
    extra_state: List[StateSpec] = field(default_factory=list)  # genai shims: passed through unchanged
    # sha256 of model.onnx without its metadata_props ("model") and of model.onnx.data ("data", if any)
    integrity: Dict[str, str] = field(default_factory=dict)
    # a Hugging Face tokenizer.json stored beside the model: {"file", "sha256", "vocab_size", "eos_token_id"}
    tokenizer: Dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ExportMetadata":
        def build(data):
            data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            data["state"] = [StateSpec(**s) for s in data["state"]]
            data["extra_state"] = [StateSpec(**s) for s in data.get("extra_state", [])]
            return cls(**data)

        older = {1: "exported by an older rfa-export (format 1, no content digest); export the checkpoint again"}
        return parse_metadata_json(text, source, FORMAT_NAME, FORMAT_VERSION, "rfa-export metadata", build, older)

    def validate(self, source: str = "metadata") -> None:
        """Raise MetadataError unless every field is consistent with the config (which is range-checked)."""
        try:
            config = RFAConfig.from_dict(self.config)
        except ConfigError as e:
            raise MetadataError(f"{source}: {e}") from None
        if not isinstance(self.genai, bool) or not isinstance(self.integrity, dict) or not isinstance(self.opsets, dict):
            raise MetadataError(f"{source}: genai must be a bool, integrity and opsets objects")
        if self.lowering not in (*LOWERINGS, TORCH_LOWERING):
            raise MetadataError(f"{source}: unknown lowering {self.lowering!r}")
        if self.dtype not in DTYPES + (("fp64",) if self.lowering == TORCH_LOWERING else ()):
            raise MetadataError(f"{source}: unknown dtype {self.dtype!r}")
        if self.lowering != TORCH_LOWERING and self.opsets != LOWERINGS[self.lowering].opsets:
            raise MetadataError(f"{source}: opsets {self.opsets} are not those of lowering {self.lowering!r}")
        expected = describe_export(config, self.lowering, self.dtype, self.opsets, self.producer, self.genai)
        for name in ("inputs", "outputs", "state", "extra_state"):
            got, want = getattr(self, name), getattr(expected, name)
            if got != want:
                raise MetadataError(f"{source}: {name}{_first_difference(got, want)}")
        if self.lowering != TORCH_LOWERING and not _is_digest(self.integrity.get("model")):
            raise MetadataError(f"{source}: no content digest")
        validate_tokenizer_entry(self.tokenizer, config.vocab_size, source)

    @property
    def model_config(self) -> RFAConfig:
        return RFAConfig.from_dict(self.config)

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    def input(self, name: str) -> Optional[TensorSpec]:
        return next((t for t in self.inputs if t.name == name), None)

    def differences(self, other: "ExportMetadata") -> List[str]:
        """Top-level fields that differ, with config fields named one by one."""
        a, b = asdict(self), asdict(other)
        names = []
        for key in a:
            if a[key] == b.get(key):
                continue
            if key == "config" and isinstance(b.get(key), dict):
                names += [f"config.{k}" for k in sorted(set(a[key]) | set(b[key])) if a[key].get(k) != b[key].get(k)]
            else:
                names.append(key)
        return names


def parse_metadata_json(text: str, source: str, format_name: str, format_version: int, what: str, build,
                        older: Optional[Dict[int, str]] = None):
    """Parse metadata JSON of one format: refuse another format or version (older versions with their own
    message), build the dataclass from the dict with `build`, turn any malformed field into MetadataError and
    validate the result."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != format_name:
            raise MetadataError(f"{source}: not {what}")
        version = data.get("format_version")
        if older and version in older:
            raise MetadataError(f"{source}: {older[version]}")
        if version != format_version:
            raise MetadataError(f"{source}: metadata format_version {version!r} is not {format_version}")
        meta = build(data)
    except MetadataError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise MetadataError(f"{source}: malformed rfa-export metadata ({e})") from None
    meta.validate(source)
    return meta


def _first_difference(got: list, want: list) -> str:
    if len(got) != len(want):
        return f" has {len(got)} entries, the config implies {len(want)}"
    i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    a, b = asdict(got[i]), asdict(want[i])
    key = next(k for k in b if a.get(k) != b[k])
    return f"[{i}].{key} is {a.get(key)!r}, the config implies {b[key]!r}"


def _is_digest(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_tokenizer_entry(tokenizer, vocab_size: int, source: str) -> None:
    """Raise MetadataError unless `tokenizer` is empty or records a stored tokenizer.json as
    format/tokenizer_file.py writes it: the file's name and sha256, a vocab_size in [1, vocab_size] (the ids the
    model takes) and an eos_token_id below it, or null."""
    if not isinstance(tokenizer, dict):
        raise MetadataError(f"{source}: tokenizer must be an object")
    if not tokenizer:
        return
    size, eos = tokenizer.get("vocab_size"), tokenizer.get("eos_token_id")
    if (tokenizer.get("file") != "tokenizer.json" or not _is_digest(tokenizer.get("sha256"))
            or not _is_int(size) or not 1 <= size <= vocab_size or not (eos is None or _is_int(eos) and 0 <= eos < size)):
        raise MetadataError(f"{source}: tokenizer must name tokenizer.json, its sha256, a vocab_size in "
                            f"[1, {vocab_size}] and an eos_token_id below it (or null)")


def input_names(config: RFAConfig) -> List[str]:
    return ["input_ids", "attention_mask"] + (["position_ids"] if config.positional != "none" else [])


def describe_state(config, n_layers: int, batch_axis: str = "batch") -> List[StateSpec]:
    """The recurrent states of n_layers layers of a model config (RFAConfig, or RFASeq2SeqConfig's decoder)."""
    extra = {"layout": INT8_ROWS_LAYOUT} if config.state_dtype == "int8" else {}
    return [StateSpec(i, STATE_IN.format(i), STATE_OUT.format(i), [batch_axis, *config.state_shape], config.state_dtype,
                      **extra) for i in range(n_layers)]


def describe_export(config: RFAConfig, lowering: str, dtype: str, opsets: Dict[str, int], producer: str,
                    genai: bool = False) -> ExportMetadata:
    """The graph's inputs, outputs and state for a model of this config (one source for the exporter's
    names and for the PyTorch backend's description of itself)."""
    inputs = [
        TensorSpec("input_ids", ["batch", "sequence"], "int64", "token ids"),
        TensorSpec("attention_mask", ["batch", "total_sequence_length"], "int64",
                   "nonzero for real tokens, 0 for padding (the state is left unchanged there); "
                   "only the last `sequence` columns are read"),
    ]
    if config.positional != "none":
        inputs.append(TensorSpec("position_ids", ["batch", "sequence"], "int64", "absolute position of each token"))
    outputs = [TensorSpec("logits", ["batch", "sequence", config.vocab_size], "float32", "next-token logits")]
    extra = genai_shim_state(config) if genai else []
    return ExportMetadata(lowering=lowering, dtype=dtype, opsets=dict(opsets), inputs=inputs, outputs=outputs,
                          state=describe_state(config, config.n_layers), config=config.to_dict(), producer=producer, genai=genai,
                          extra_state=extra)


def genai_shim_state(config: RFAConfig) -> List[StateSpec]:
    """The conv_state inputs onnxruntime-genai 0.18 binds beside every recurrent state (docs/genai.md)."""
    return [StateSpec(i, GENAI_CONV_IN.format(i), GENAI_CONV_OUT.format(i), ["batch", 1, 1],
                      layout="onnxruntime-genai shim: passed through unchanged and never read by the model "
                             "(docs/genai.md)") for i in range(config.n_layers)]


def attach_metadata(model, meta: ExportMetadata) -> None:
    """Write meta into an onnx ModelProto's metadata_props (replacing earlier rfa-export entries)."""
    entries = {
        METADATA_KEY: meta.to_json(),
        "rfa_export.lowering": meta.lowering,
        "rfa_export.state_inputs": ",".join(s.input for s in meta.state),
        "rfa_export.state_outputs": ",".join(s.output for s in meta.state),
    }
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def metadata_from_model(model, source: str = "model") -> ExportMetadata:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ExportMetadata.from_json(prop.value, source)
    raise MetadataError(f"{source}: no rfa-export metadata (metadata_props[{METADATA_KEY!r}]); was it exported by rfa-export?")


def read_metadata_file(out_dir: Union[str, Path]) -> ExportMetadata:
    """The JSON file of an export directory alone (open_export also checks it against the model)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MetadataError(f"{out_dir}: no such export directory")
    path = out_dir / METADATA_FILE
    if not path.is_file():
        raise MetadataError(f"{out_dir}: no {METADATA_FILE}; not an rfa-export output directory")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path}: unreadable ({e})") from None
    return ExportMetadata.from_json(text, str(path))
