"""open_export: an export directory's metadata, checked against the model file before anything runs it.

The model's embedded metadata is the authority. The JSON beside it must say exactly the same, and the
model (and its external data) must still have the content digest recorded at export: an edited weight,
node or metadata field, or a JSON from another export, is refused with the reason.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .metadata import DATA_FILE, METADATA_FILE, METADATA_KEY, MODEL_FILE, ExportMetadata, MetadataError, read_metadata_file
from .model_file import file_digest, scan_model_file


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


def open_export(out_dir: Union[str, Path]) -> ExportDir:
    out_dir = Path(out_dir)
    from_json = read_metadata_file(out_dir)
    model_path = out_dir / MODEL_FILE
    if not model_path.is_file():
        raise MetadataError(f"{out_dir}: no {MODEL_FILE}")
    scan = scan_model_file(model_path)
    embedded = scan.metadata_props.get(METADATA_KEY)
    if embedded is None:
        raise MetadataError(f"{model_path}: no rfa-export metadata; was it exported by rfa-export?")
    meta = ExportMetadata.from_json(embedded, f"{model_path} (embedded metadata)")
    differ = meta.differences(from_json)
    if differ:
        raise MetadataError(f"{out_dir}: {METADATA_FILE} differs from the metadata inside {MODEL_FILE} "
                            f"({', '.join(differ)}); the model's copy is the authority: export again, or restore "
                            f"{METADATA_FILE}")
    if scan.digest != meta.integrity["model"]:
        raise MetadataError(f"{model_path}: modified after export (its content digest differs from the one recorded "
                            "at export); export the checkpoint again")
    if "data" in meta.integrity:
        data = out_dir / DATA_FILE
        if not data.is_file():
            raise MetadataError(f"{out_dir}: no {DATA_FILE} (the model's weights)")
        if file_digest(data) != meta.integrity["data"]:
            raise MetadataError(f"{data}: modified after export (its content digest differs from the one recorded "
                                "at export); export the checkpoint again")
    if meta.tokenizer:
        tokenizer = out_dir / meta.tokenizer["file"]
        if not tokenizer.is_file():
            raise MetadataError(f"{out_dir}: no {meta.tokenizer['file']} (the model's tokenizer)")
        if file_digest(tokenizer) != meta.tokenizer["sha256"]:
            raise MetadataError(f"{tokenizer}: modified after export (its digest differs from the one recorded at export)")
    return ExportDir(out_dir, meta)
