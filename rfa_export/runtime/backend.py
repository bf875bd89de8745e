"""The one small interface every backend implements: run a chunk of tokens against a state.

`DecoderBackend.run` checks every input against the model's description (docs/validation.md) before the
backend sees it; backends implement `_run` and the state's conversions.
"""

import abc
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..format.metadata import ExportMetadata

State = Any  # backend-native: torch tensors, numpy arrays or device buffers, one per state tensor
MAX_POSITION = 2**31 - 1


class InputError(ValueError):
    """Inputs that do not fit the model: the message says which and why."""


class NonFiniteError(RuntimeError):
    """Logits or a state holding NaN or infinity: they must never become tokens."""


def as_token_array(ids, what: str, vocab_size: int) -> np.ndarray:
    """ids as int64, refusing floats (which would be truncated), bools and ids outside [0, vocab_size)."""
    arr = np.asarray(ids)
    if arr.size and arr.dtype.kind not in "iu":
        raise InputError(f"{what}: token ids must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = int(arr[(arr < 0) | (arr >= vocab_size)][0])
        raise InputError(f"{what}: token id {bad} is out of range [0, {vocab_size})")
    return arr


class DecoderBackend(abc.ABC):
    """A stateful decoder: (tokens, mask, positions, state) -> (logits, new state).

    `spec` is the exported model's metadata (for PyTorch, what an export would write): the state tensors,
    their shapes and dtypes, and which inputs the graph takes. Nothing about the layout is guessed.
    """

    name: str = "backend"
    spec: ExportMetadata
    tokenizer_path = None  # the model's tokenizer.json, if it has one (Decoder loads it)

    def run(self, input_ids, attention_mask, position_ids, state: State) -> Tuple[np.ndarray, State]:
        """input_ids [B, T] integers in [0, vocab); attention_mask [B, T] (nonzero = real token);
        position_ids [B, T] non-negative integers, or None for a model without positions.
        Returns logits [B, T, V] float32 on the host and the new state (backend-native). Inputs that do not
        fit the model raise InputError before the backend runs."""
        ids = as_token_array(input_ids, "input_ids", self.vocab_size)
        if ids.ndim != 2 or 0 in ids.shape:
            raise InputError(f"input_ids must be [batch, sequence] with both >= 1, got shape {list(ids.shape)}")
        B, T = ids.shape
        mask = np.asarray(attention_mask)
        if mask.dtype.kind not in "iub" or mask.ndim != 2 or mask.shape[0] != B or mask.shape[1] < T:
            raise InputError(f"attention_mask must be integers [batch={B}, >= {T}], got {mask.dtype} {list(mask.shape)}")
        mask = mask[:, mask.shape[1] - T:].astype(np.int64)
        positions = None
        if self.needs_positions:
            if position_ids is None:
                raise InputError("this model needs position_ids")
            positions = np.asarray(position_ids)
            if positions.dtype.kind not in "iu" or positions.shape != (B, T):
                raise InputError(f"position_ids must be integers [{B}, {T}], got {positions.dtype} {list(positions.shape)}")
            if positions.min() < 0 or positions.max() > MAX_POSITION:
                raise InputError(f"position_ids must lie in [0, {MAX_POSITION}]")
            positions = positions.astype(np.int64)
        self.check_state_shapes(self.state_shapes(state), B)
        return self._run(ids, mask, positions, state)

    @abc.abstractmethod
    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: Optional[np.ndarray],
             state: State) -> Tuple[np.ndarray, State]:
        """run() after its checks: int64 arrays, attention_mask [B, T]."""

    @abc.abstractmethod
    def to_host(self, state: State) -> List[np.ndarray]:
        """The state as float32 numpy arrays, in spec.state order: the portable form, its stored entries in
        float32 whatever the storage dtype (exact: bfloat16 widens, int8 rows keep their codes and exponents;
        runtime/state_values.py gives the values these stand for)."""

    @abc.abstractmethod
    def from_host(self, arrays: Sequence[np.ndarray]) -> State:
        """Backend-native state from float32 numpy arrays in spec.state order (the portable form of to_host;
        rounded to a reduced float storage dtype)."""

    def state_shapes(self, state: State) -> List[Tuple[Tuple[int, ...], str]]:
        """(shape, numpy dtype name) of each state tensor, without moving it (device backends override)."""
        try:
            return [(tuple(np.shape(a)), str(np.asarray(a).dtype)) for a in state]
        except TypeError:
            raise InputError(f"state must be a list of arrays, got {type(state).__name__}") from None

    # Defaults in terms of the host form; device backends override to stay on the device.
    def zeros_state(self, batch: int) -> State:
        return self.from_host([np.zeros([batch, *s.shape[1:]], dtype=np.float32) for s in self.spec.state])

    def batch_size(self, state: State) -> int:
        return int(self.state_shapes(state)[0][0][0])

    def select(self, state: State, indices: Sequence[int]) -> State:
        """Rows `indices` of the batch, in that order (beam reordering, removing finished sequences)."""
        idx = np.asarray(indices, dtype=np.int64)
        return self.from_host([a[idx] for a in self.to_host(state)])

    def concat(self, states: Sequence[State]) -> State:
        """Stack the batches of several states (adding sequences to a running batch)."""
        hosts = [self.to_host(s) for s in states]
        return self.from_host([np.concatenate(parts, axis=0) for parts in zip(*hosts)])

    @property
    def needs_positions(self) -> bool:
        return self.spec.input("position_ids") is not None

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def check_state_shapes(self, shapes: Sequence[Tuple[Tuple[int, ...], str]], batch: Optional[int] = None,
                           host: bool = False) -> None:
        """Raise InputError unless the state matches spec.state in count, shape and dtype (and batch). host:
        the portable form, float32 whatever the state is stored in (exact for a bfloat16 state)."""
        if len(shapes) != len(self.spec.state):
            raise InputError(f"state has {len(shapes)} tensors, the model has {len(self.spec.state)}")
        for (got, dtype), s in zip(shapes, self.spec.state):
            want = [batch if isinstance(d, str) else d for d in s.shape]
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                raise InputError(f"state {s.input} has shape {list(got)}, expected {s.shape}"
                                 + (f" with batch {batch}" if batch else ""))
            expected = "float32" if host else s.dtype
            if dtype != expected:
                raise InputError(f"state {s.input} has dtype {dtype}, expected {expected}")

    def check_state(self, arrays: Sequence[np.ndarray], batch: Optional[int] = None) -> None:
        """check_state_shapes for host arrays (float32, the portable form), and every value finite."""
        self.check_state_shapes([(tuple(np.shape(a)), str(np.asarray(a).dtype)) for a in arrays], batch, host=True)
        for a, s in zip(arrays, self.spec.state):
            if not np.isfinite(a).all():
                raise InputError(f"state {s.input} contains NaN or infinity")
