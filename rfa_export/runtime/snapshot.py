"""Save a conversation's state to bytes or a file and resume it later, on the same or another backend.

A snapshot is an uncompressed .npz (arrays + a JSON header naming the model's config). `restore` reads
every array's shape from its .npy header and checks it against the decoder's model before reading any
data, so a small file cannot ask for a large allocation; it never unpickles.
"""

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .backend import InputError
from .decoder import Decoder, DecodeState

FORMAT_NAME = "rfa-export/state-snapshot"
FORMAT_VERSION = 2  # 2: the header carries the model's config, so a mismatch can be named
MAX_HEADER_BYTES = 1 << 20


def model_fingerprint(decoder: Decoder) -> str:
    """Same for every backend and export dtype of one model: its config and state layout."""
    spec = decoder.backend.spec
    ident = {"config": spec.config, "state": [(s.shape[1:], s.dtype) for s in spec.state]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def snapshot(decoder: Decoder, state: DecodeState, logits: Optional[np.ndarray] = None,
             rows: Optional[Sequence[int]] = None) -> bytes:
    """The state (optionally only `rows` of the batch) and each sequence's pending next-token logits."""
    if rows is not None:
        state = decoder.select(state, rows)
        logits = None if logits is None else np.asarray(logits)[np.asarray(rows)]
    arrays = decoder.backend.to_host(state.state)
    spec = decoder.backend.spec
    payload = {f"state_{i}": np.ascontiguousarray(a, dtype=np.float32) for i, a in enumerate(arrays)}
    payload["positions"] = state.positions.astype(np.int64)
    if logits is not None:
        payload["logits"] = np.ascontiguousarray(logits, dtype=np.float32)
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model_fingerprint(decoder),
              "config": spec.config, "state": [s.input for s in spec.state], "digest": _digest(payload)}
    payload["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return buf.getvalue()


def _digest(arrays: Dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes: a snapshot edited anywhere is refused."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _array_header(zf: zipfile.ZipFile, name: str) -> Tuple[Tuple[int, ...], np.dtype]:
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise InputError(f"not a state snapshot (member {name} is compressed)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    if fortran or dtype.hasobject:
        raise InputError(f"not a state snapshot (member {name} is not a plain C-ordered array)")
    return tuple(shape), dtype


def _read(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(name) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def restore(decoder: Decoder, data: bytes) -> Tuple[DecodeState, Optional[np.ndarray]]:
    """(state on this decoder's backend, pending logits or None). A snapshot of another model is refused
    with the config fields that differ; every array is checked (shape, dtype, finite) before use."""
    spec = decoder.backend.spec
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")}
            if "header" not in names:
                raise InputError("not a state snapshot (no header)")
            shape, dtype = _array_header(zf, "header.npy")
            if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_HEADER_BYTES:
                raise InputError("not a state snapshot (bad header)")
            header = json.loads(bytes(_read(zf, "header.npy")).decode())
            if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
                raise InputError("not a state snapshot (wrong format name)")
            if header.get("format_version") not in (1, FORMAT_VERSION):
                raise InputError(f"state snapshot format_version {header.get('format_version')!r} is not supported")
            _check_same_model(decoder, header)
            expected = _expected_arrays(decoder, zf, names)
            arrays = {name: _read(zf, name + ".npy") for name in expected}
            if header.get("format_version") == FORMAT_VERSION and header.get("digest") != _digest(arrays):
                raise InputError("the snapshot's data does not match its digest (the file was changed or damaged)")
    except InputError:
        raise
    except Exception as e:  # anything the zip, .npy or JSON parsers raise on a damaged file
        raise InputError(f"not a state snapshot ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    state = decoder.state_from_arrays([arrays[f"state_{i}"] for i in range(len(spec.state))], arrays["positions"])
    logits = arrays.get("logits")
    if logits is not None and not np.isfinite(logits).all():
        raise InputError("the snapshot's logits contain NaN or infinity")
    return state, logits


def _check_same_model(decoder: Decoder, header: dict) -> None:
    spec = decoder.backend.spec
    config = header.get("config")
    if isinstance(config, dict):
        differ = [f"{k} is {spec.config.get(k)!r} here, {config.get(k)!r} in the snapshot"
                  for k in sorted(set(spec.config) | set(config)) if spec.config.get(k) != config.get(k)]
        if differ:
            raise InputError("the snapshot was taken from a different model: config " + "; ".join(differ))
    if header.get("model") != model_fingerprint(decoder):
        raise InputError("the snapshot was taken from a different model (config or state layout differs)")


def _expected_arrays(decoder: Decoder, zf: zipfile.ZipFile, names) -> Dict[str, Tuple]:
    """Check every array's declared shape and dtype against the model, before any data is read."""
    spec = decoder.backend.spec
    shape, dtype = _array_header(zf, "positions.npy") if "positions" in names else (None, None)
    if shape is None or len(shape) != 1 or dtype.kind not in "iu":
        raise InputError("not a state snapshot (positions must be a 1-D integer array)")
    B = shape[0]
    expected = {"positions": (shape, dtype)}
    wanted = {f"state_{i}": ((B, *s.shape[1:]), np.float32) for i, s in enumerate(spec.state)}
    if "logits" in names:
        wanted["logits"] = ((B, decoder.backend.vocab_size), np.float32)
    for name, (want_shape, want_dtype) in wanted.items():
        if name not in names:
            raise InputError(f"not a state snapshot (no {name})")
        got_shape, got_dtype = _array_header(zf, name + ".npy")
        if got_shape != want_shape or got_dtype != want_dtype:
            raise InputError(f"snapshot array {name} is {np.dtype(got_dtype).name} {list(got_shape)}, this model "
                             f"needs {np.dtype(want_dtype).name} {list(want_shape)}")
        expected[name] = (got_shape, got_dtype)
    return expected


def save_snapshot(path: Union[str, Path], decoder: Decoder, state: DecodeState, logits=None, rows=None) -> None:
    Path(path).write_bytes(snapshot(decoder, state, logits, rows))


def load_snapshot(path: Union[str, Path], decoder: Decoder):
    return restore(decoder, Path(path).read_bytes())
