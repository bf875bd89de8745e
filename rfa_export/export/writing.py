"""Writing an export directory: the model sealed with its metadata and content digest, external data for
large weights, checked, and published in one atomic step."""

import copy
import json
import shutil
from pathlib import Path
from typing import Optional, Union

import onnx

from ..format.metadata import DATA_FILE, METADATA_FILE, MODEL_FILE, ExportMetadata
from ..format.model_file import file_digest, seal_model
from ..format.publish import GENAI_CONFIG_FILE, staged_export
from ..format.tokenizer_file import TOKENIZER_FILE, describe_tokenizer
from ..progress import SILENT, Progress
from .genai import genai_config, genai_tokenizer_config

EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot hold more than 2 GB; go external well before that


def check_exported(proto: onnx.ModelProto, path: Optional[Path] = None) -> None:
    """onnx.checker with full_check, which includes shape inference with type checks in strict mode (an
    inference error fails the check). On the file when the weights are external (protobuf's 2 GB limit)."""
    onnx.checker.check_model(str(path) if path is not None else proto, full_check=True)


def write_export(proto: onnx.ModelProto, meta: ExportMetadata, out_dir: Union[str, Path], progress: Progress = SILENT,
                 extra_files: Optional[dict] = None, tokenizer: Union[str, Path, None] = None) -> Path:
    """Write OUT_DIR/model.onnx (+ model.onnx.data when large) and rfa_export.json, sealed with the digest
    of the model's content, published in one atomic step (rfa_export/format/publish.py): on failure OUT_DIR
    keeps what it had. tokenizer: a Hugging Face tokenizer.json to store beside the model (checked against
    the vocabulary, recorded with its digest)."""
    proto = copy.deepcopy(proto)
    if tokenizer is not None:
        meta.tokenizer = describe_tokenizer(tokenizer, meta.vocab_size)
    with staged_export(out_dir) as tmp:
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
            if meta.genai:
                (tmp / "tokenizer_config.json").write_text(json.dumps(genai_tokenizer_config(), indent=2) + "\n")
        weights = sum(len(t.raw_data) for t in proto.graph.initializer)
        external = weights > EXTERNAL_DATA_THRESHOLD
        with progress.step(f"writing {MODEL_FILE} ({weights / 1e6:.1f} MB of weights{', external data' if external else ''})"):
            data_digest = None
            if external:
                onnx.external_data_helper.convert_model_to_external_data(
                    proto, all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
                proto = onnx.external_data_helper.write_external_data_tensors(proto, str(tmp))
                data_digest = file_digest(tmp / DATA_FILE)
            (tmp / MODEL_FILE).write_bytes(seal_model(proto, meta, data_digest))
            (tmp / METADATA_FILE).write_text(meta.to_json())
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if meta.genai and GENAI_CONFIG_FILE not in (extra_files or {}):
                (tmp / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(meta), indent=2) + "\n")
        with progress.step("checking (onnx.checker full_check: structure and strict shape inference)"):
            check_exported(None, tmp / MODEL_FILE)
    return Path(out_dir) / MODEL_FILE
