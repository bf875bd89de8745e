"""Save a conversation's state to bytes or a file and resume it later, on the same or another backend."""

import hashlib
import io
import json
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .backend import InputError
from .decoder import Decoder, DecodeState

FORMAT_NAME = "rfa-export/state-snapshot"
FORMAT_VERSION = 1


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
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model_fingerprint(decoder),
              "state": [s.input for s in decoder.backend.spec.state]}
    payload = {f"state_{i}": np.ascontiguousarray(a, dtype=np.float32) for i, a in enumerate(arrays)}
    payload["positions"] = state.positions.astype(np.int64)
    if logits is not None:
        payload["logits"] = np.asarray(logits, dtype=np.float32)
    payload["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return buf.getvalue()


def restore(decoder: Decoder, data: bytes) -> Tuple[DecodeState, Optional[np.ndarray]]:
    """(state on this decoder's backend, pending logits or None). Refuses a snapshot of another model."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            n = len(header["state"])
            arrays = [z[f"state_{i}"] for i in range(n)]
            positions = z["positions"]
            logits = z["logits"] if "logits" in z.files else None
    except (ValueError, KeyError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not a state snapshot ({e})") from None
    if header.get("format") != FORMAT_NAME or header.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"not a supported state snapshot (format {header.get('format')!r}, version {header.get('format_version')})")
    if header.get("model") != model_fingerprint(decoder):
        raise InputError("the snapshot was taken from a different model (config or state layout differs)")
    return decoder.state_from_arrays(arrays, positions), logits


def save_snapshot(path: Union[str, Path], decoder: Decoder, state: DecodeState, logits=None, rows=None) -> None:
    Path(path).write_bytes(snapshot(decoder, state, logits, rows))


def load_snapshot(path: Union[str, Path], decoder: Decoder):
    return restore(decoder, Path(path).read_bytes())
