"""model.onnx at the byte level: its rfa-export metadata and the digest of everything else, read in one pass
over the protobuf wire format without parsing the graph (and without importing onnx).

The digest is sha256 over the bytes of every top-level ModelProto field except metadata_props (field 14),
in file order: the graph, its weights, opsets and functions. The metadata carries it, so any later edit of
the model (a weight, a node, the embedded metadata) is detected when the export is opened.
"""

import hashlib
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .metadata import METADATA_KEY, ExportMetadata, MetadataError, attach_metadata

METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props: StringStringEntryProto {key = 1, value = 2}


@dataclass
class ModelFileScan:
    metadata_props: Dict[str, str]
    digest: str


def _varint(buf, pos: int, end: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise MetadataError("not a valid ONNX model (truncated or corrupt protobuf)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, field start, payload start, field end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        first = pos
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise MetadataError("not a valid ONNX model (field number 0)")
        payload = pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, payload = _varint(buf, pos, end)
            pos = payload + length
        elif wire == 5:
            pos += 4
        else:
            raise MetadataError(f"not a valid ONNX model (wire type {wire})")
        if pos > end:
            raise MetadataError("not a valid ONNX model (truncated)")
        yield number, wire, first, payload, pos


def _entry(buf, start: int, end: int) -> Tuple[str, str]:
    key = value = ""
    for number, wire, _, payload, stop in _fields(buf, start, end):
        if wire != 2 or number not in (1, 2):
            continue
        try:
            text = bytes(buf[payload:stop]).decode("utf-8")
        except UnicodeDecodeError:
            raise MetadataError("not a valid ONNX model (metadata that is not UTF-8)") from None
        key, value = (text, value) if number == 1 else (key, text)
    return key, value


def scan_model_bytes(buf) -> ModelFileScan:
    """buf: the serialized ModelProto (bytes, or an mmap, which is free to close when this returns or raises)."""
    view = memoryview(buf)
    h = hashlib.sha256()
    props: Dict[str, str] = {}
    error = None
    try:
        for number, wire, first, payload, stop in _fields(view, 0, len(view)):
            if number == METADATA_PROPS_FIELD and wire == 2:
                key, value = _entry(view, payload, stop)
                props[key] = value
            else:
                h.update(view[first:stop])
    except MetadataError as e:
        error = str(e)  # raised below, once nothing refers to the view any more
    view.release()
    if error is not None:
        raise MetadataError(error)
    return ModelFileScan(props, h.hexdigest())


def scan_model_file(path: Union[str, Path]) -> ModelFileScan:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if path.stat().st_size == 0:
                raise MetadataError(f"{path}: empty file, not an ONNX model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return scan_model_bytes(buf)
    except MetadataError as e:
        raise MetadataError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    except OSError as e:
        raise MetadataError(f"{path}: unreadable ({e.strerror or e})") from None


def file_digest(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def seal_model(model, meta: ExportMetadata, data_digest: str = None) -> bytes:
    """The final bytes of an onnx ModelProto: meta (with the digest of the model's content, and of its
    external data file when given) attached to its metadata_props. Checked by scanning the result."""
    digest = scan_model_bytes(model.SerializeToString()).digest
    meta.integrity = {"algorithm": "sha256", "model": digest, **({"data": data_digest} if data_digest else {})}
    attach_metadata(model, meta)
    sealed = model.SerializeToString()
    scan = scan_model_bytes(sealed)
    if scan.digest != digest or scan.metadata_props.get(METADATA_KEY) != meta.to_json():
        raise RuntimeError("the serialized model is not stable: its digest changed when the metadata was attached")
    return sealed


def seal_models(models: Dict[str, Any], meta, data_digests: Dict[str, str] = None) -> Dict[str, bytes]:
    """seal_model for the graphs of one export (file name -> ModelProto): meta.integrity records every
    file's digest (and those of external data files), and every graph embeds the same metadata."""
    digests = {name: scan_model_bytes(model.SerializeToString()).digest for name, model in models.items()}
    meta.integrity = {**digests, **(data_digests or {})}
    text = meta.to_json()
    sealed = {}
    for name, model in models.items():
        kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key=METADATA_KEY, value=text)
        sealed[name] = model.SerializeToString()
        scan = scan_model_bytes(sealed[name])
        if scan.digest != digests[name] or scan.metadata_props.get(METADATA_KEY) != text:
            raise RuntimeError(f"the serialized {name} is not stable: its digest changed when the metadata was attached")
    return sealed
