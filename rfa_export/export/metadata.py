"""What an exported model says about itself: IO, state tensors, lowering, opsets (JSON, in the model's
metadata_props and in a file beside it), so runtimes and tools need no guessing."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import onnx

METADATA_KEY = "rfa_export"
METADATA_FILE = "rfa_export.json"
MODEL_FILE = "model.onnx"
FORMAT_NAME = "rfa-export/onnx"
FORMAT_VERSION = 1


class MetadataError(ValueError):
    """An export directory or model whose rfa-export metadata is missing or malformed."""


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
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "ExportMetadata":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT_NAME:
                raise MetadataError(f"{source}: not rfa-export metadata (format {data.get('format')!r})")
            if data.get("format_version", 0) > FORMAT_VERSION:
                raise MetadataError(f"{source}: metadata format_version {data['format_version']} is newer than this build")
            data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            data["state"] = [StateSpec(**s) for s in data["state"]]
            data["extra_state"] = [StateSpec(**s) for s in data.get("extra_state", [])]
            return cls(**data)
        except MetadataError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise MetadataError(f"{source}: malformed rfa-export metadata ({e})") from None

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    def input(self, name: str) -> Optional[TensorSpec]:
        return next((t for t in self.inputs if t.name == name), None)


def attach_metadata(model: onnx.ModelProto, meta: ExportMetadata) -> None:
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


def metadata_from_model(model: onnx.ModelProto, source: str = "model") -> ExportMetadata:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ExportMetadata.from_json(prop.value, source)
    raise MetadataError(f"{source}: no rfa-export metadata (metadata_props[{METADATA_KEY!r}]); was it exported by rfa-export?")


def read_export_dir(out_dir: Union[str, Path]) -> ExportMetadata:
    """The metadata of an export directory, from its JSON file (the model's own copy is identical)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MetadataError(f"{out_dir}: no such export directory")
    path = out_dir / METADATA_FILE
    if not path.is_file():
        raise MetadataError(f"{out_dir}: no {METADATA_FILE}; not an rfa-export output directory")
    return ExportMetadata.from_json(path.read_text(), str(path))
