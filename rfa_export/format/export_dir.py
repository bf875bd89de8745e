"""open_export / open_seq2seq_export: an export directory's metadata, checked against its model files before
anything runs them.

The models' embedded metadata is the authority. The JSON beside them must say exactly the same, and every
model (and its external data) must still have the content digest recorded at export: an edited weight, node
or metadata field, or a JSON from another export, is refused with the reason.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .metadata import (DATA_FILE, FORMAT_NAME, METADATA_FILE, METADATA_KEY, MODEL_FILE, ExportMetadata, MetadataError,
                       read_metadata_file)
from .model_file import file_digest, scan_model_file
from .seq2seq_metadata import DECODER_FILE, ENCODER_FILE, SEQ2SEQ_FORMAT_NAME, Seq2SeqExportMetadata


@dataclass
class ExportDir:
    directory: Path
    meta: ExportMetadata

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def tokenizer_path(self) -> Optional[Path]:
        return self.directory / self.meta.tokenizer["file"] if self.meta.tokenizer else None

    @property
    def data_path(self) -> Optional[Path]:
        return self.directory / DATA_FILE if "data" in self.meta.integrity else None


@dataclass
class Seq2SeqExportDir:
    directory: Path
    meta: Seq2SeqExportMetadata

    @property
    def encoder_path(self) -> Path:
        return self.directory / ENCODER_FILE

    @property
    def decoder_path(self) -> Path:
        return self.directory / DECODER_FILE

    @property
    def tokenizer_path(self) -> Optional[Path]:
        return self.directory / self.meta.tokenizer["file"] if self.meta.tokenizer else None


def export_kind(out_dir: Union[str, Path]) -> str:
    """"lm" or "seq2seq", from the format named in the directory's rfa_export.json (nothing else is checked)."""
    out_dir = Path(out_dir)
    path = out_dir / METADATA_FILE
    if not out_dir.is_dir():
        raise MetadataError(f"{out_dir}: no such export directory")
    if not path.is_file():
        raise MetadataError(f"{out_dir}: no {METADATA_FILE}; not an rfa-export output directory")
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise MetadataError(f"{path}: unreadable rfa-export metadata ({' '.join(str(e).split())[:200]})") from None
    if name == SEQ2SEQ_FORMAT_NAME:
        return "seq2seq"
    if name == FORMAT_NAME:
        return "lm"
    raise MetadataError(f"{path}: not rfa-export metadata (format {name!r})")


def _embedded(model_path: Path, parse, source_json, out_dir: Path):
    """The metadata embedded in a model file, checked against the JSON beside it; with the file's digest."""
    if not model_path.is_file():
        raise MetadataError(f"{out_dir}: no {model_path.name}")
    scan = scan_model_file(model_path)
    embedded = scan.metadata_props.get(METADATA_KEY)
    if embedded is None:
        raise MetadataError(f"{model_path}: no rfa-export metadata; was it exported by rfa-export?")
    meta = parse(embedded, f"{model_path} (embedded metadata)")
    differ = meta.differences(source_json)
    if differ:
        raise MetadataError(f"{out_dir}: {METADATA_FILE} differs from the metadata inside {model_path.name} "
                            f"({', '.join(differ)}); the model's copy is the authority: export again, or restore "
                            f"{METADATA_FILE}")
    return meta, scan.digest


def _modified(path: Path) -> MetadataError:
    return MetadataError(f"{path}: modified after export (its content digest differs from the one recorded at export); "
                         "export the checkpoint again")


def _check_tokenizer(out_dir: Path, tokenizer: dict) -> None:
    if tokenizer:
        path = out_dir / tokenizer["file"]
        if not path.is_file():
            raise MetadataError(f"{out_dir}: no {tokenizer['file']} (the model's tokenizer)")
        if file_digest(path) != tokenizer["sha256"]:
            raise MetadataError(f"{path}: modified after export (its digest differs from the one recorded at export)")


def open_export(out_dir: Union[str, Path]) -> ExportDir:
    """A language-model export (model.onnx), checked."""
    out_dir = Path(out_dir)
    if export_kind(out_dir) == "seq2seq":
        raise MetadataError(f"{out_dir}: an encoder-decoder export: use `rfa-export translate` (this takes a "
                            "language-model export)")
    from_json = read_metadata_file(out_dir)
    meta, digest = _embedded(out_dir / MODEL_FILE, ExportMetadata.from_json, from_json, out_dir)
    if digest != meta.integrity["model"]:
        raise _modified(out_dir / MODEL_FILE)
    if "data" in meta.integrity:
        data = out_dir / DATA_FILE
        if not data.is_file():
            raise MetadataError(f"{out_dir}: no {DATA_FILE} (the model's weights)")
        if file_digest(data) != meta.integrity["data"]:
            raise _modified(data)
    _check_tokenizer(out_dir, meta.tokenizer)
    return ExportDir(out_dir, meta)


def open_seq2seq_export(out_dir: Union[str, Path]) -> Seq2SeqExportDir:
    """An encoder-decoder export (encoder_model.onnx, decoder_model.onnx), checked."""
    out_dir = Path(out_dir)
    if export_kind(out_dir) == "lm":
        raise MetadataError(f"{out_dir}: a language-model export: use `rfa-export generate` (this takes an "
                            "encoder-decoder export)")
    path = out_dir / METADATA_FILE
    from_json = Seq2SeqExportMetadata.from_json(path.read_text(encoding="utf-8"), str(path))
    meta = None
    for name in (ENCODER_FILE, DECODER_FILE):
        meta, digest = _embedded(out_dir / name, Seq2SeqExportMetadata.from_json, from_json, out_dir)
        if digest != meta.integrity[name]:
            raise _modified(out_dir / name)
        data = f"{name}.data"
        if data in meta.integrity:
            if not (out_dir / data).is_file():
                raise MetadataError(f"{out_dir}: no {data} (the model's weights)")
            if file_digest(out_dir / data) != meta.integrity[data]:
                raise _modified(out_dir / data)
    _check_tokenizer(out_dir, meta.tokenizer)
    return Seq2SeqExportDir(out_dir, meta)
