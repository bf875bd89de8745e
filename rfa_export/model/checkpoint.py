"""The checkpoint file `rfa-export MODEL.pt` reads: format version, config and weights, weights-only."""

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ..format.config import RFASeq2SeqConfig
from .config import ConfigError, RFAConfig
from .lm import RFALanguageModel, language_model_weight_shapes
from .seq2seq import RFASeq2Seq, seq2seq_weight_shapes

FORMAT_NAME = "rfa-export/checkpoint"
SEQ2SEQ_FORMAT_NAME = "rfa-export/seq2seq-checkpoint"
KINDS = {FORMAT_NAME: "a language-model", SEQ2SEQ_FORMAT_NAME: "an encoder-decoder"}
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the problem."""


def save_checkpoint(model: RFALanguageModel, path: Union[str, Path], metadata: Dict[str, str] = None) -> None:
    """Write model to path atomically (a temporary file renamed into place)."""
    _save(model, FORMAT_NAME, path, metadata)


def save_seq2seq_checkpoint(model: RFASeq2Seq, path: Union[str, Path], metadata: Dict[str, str] = None) -> None:
    """An encoder-decoder's checkpoint: the same file layout under the format name SEQ2SEQ_FORMAT_NAME."""
    _save(model, SEQ2SEQ_FORMAT_NAME, path, metadata)


def _save(model, format_name: str, path, metadata) -> None:
    payload = {
        "format": format_name,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".ckpt-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """torch.load(weights_only=True) with every failure turned into a CheckpointError. Never runs code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found or re.search(r"Unsupported class|REDUCE|BUILD", str(e)):
            what = f" (it references {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects beyond tensors and plain data{what}, "
                "possibly code; nothing in it was executed"
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable pickle data)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint, possibly truncated ({_first_line(e)})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not an rfa-export checkpoint (top level is {type(payload).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not an rfa-export checkpoint (missing keys: {', '.join(missing)})")
    if payload["format"] not in KINDS:
        raise CheckpointError(f"{path}: format is {payload['format']!r}, expected one of {', '.join(map(repr, KINDS))}")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not supported (this build reads 1..{FORMAT_VERSION})")
    return payload


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> RFALanguageModel:
    """Load a checkpoint written by save_checkpoint into an RFALanguageModel in eval mode.

    Raises CheckpointError for anything wrong: missing file, not a torch file, truncated, a pickle that
    would run code, missing keys, a bad config, weights whose names or shapes do not match the config.
    """
    model = _load_checked(path, map_location, FORMAT_NAME, RFAConfig, language_model_weight_shapes, RFALanguageModel)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval()


def _load_checked(path, map_location, format_name: str, config_type, weight_shapes, model_type):
    """The checkpoint's model of model_type, every weight checked against the shapes its config implies before
    anything is built (ties between weights are the caller's to restore)."""
    payload = read_checkpoint(path)
    _expect_kind(path, payload, format_name)
    try:
        config = config_type.from_dict(payload["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: bad config: {e}") from None
    weights = payload["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: state_dict must map names to tensors")
    check_weights(path, weights, weight_shapes(config))
    with torch.device("meta"):
        model = model_type(config)
    model = model.to_empty(device=map_location)
    model.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True)
    return model


def _expect_kind(path, payload, format_name: str) -> None:
    if payload["format"] != format_name:
        raise CheckpointError(f"{path}: {KINDS[payload['format']]} checkpoint; this takes {KINDS[format_name]} one")


def load_seq2seq_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> RFASeq2Seq:
    """Load a checkpoint written by save_seq2seq_checkpoint, with the checks of load_checkpoint."""
    model = _load_checked(path, map_location, SEQ2SEQ_FORMAT_NAME, RFASeq2SeqConfig, seq2seq_weight_shapes, RFASeq2Seq)
    if model.config.shared_vocab:
        model.tgt_embed = model.src_embed
    if model.config.tie_embeddings:
        model.lm_head.weight = model.tgt_embed.weight
    return model.eval()


def checkpoint_kind(path: Union[str, Path]) -> str:
    """"lm" or "seq2seq" for a readable rfa-export checkpoint (CheckpointError otherwise)."""
    return "lm" if read_checkpoint(path)["format"] == FORMAT_NAME else "seq2seq"


def check_weights(path, weights: Dict[str, torch.Tensor], expected: Dict[str, tuple]) -> None:
    """Names, shapes, dtypes and finiteness of the file's tensors against the shapes the config implies
    (computed arithmetically, so a config that claims a huge model costs nothing to refuse)."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {_preview(unexpected)}")
        raise CheckpointError(f"{path}: weights do not match the config: {'; '.join(parts)}")
    for name, shape in expected.items():
        got = weights[name]
        if tuple(got.shape) != tuple(shape):
            raise CheckpointError(
                f"{path}: weights do not match the config: {name} has shape {tuple(got.shape)}, "
                f"the config implies {tuple(shape)}"
            )
        if not got.is_floating_point():
            raise CheckpointError(f"{path}: {name} has dtype {got.dtype}, expected a floating-point tensor")
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{path}: {name} contains NaN or infinity")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _preview(names, limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
