"""The one small interface every backend implements: run a chunk of tokens against a state."""

import abc
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..export.metadata import ExportMetadata

State = Any  # backend-native: torch tensors, numpy arrays or device buffers, one per state tensor


class InputError(ValueError):
    """Inputs that do not fit the model: the message says which and why."""


class DecoderBackend(abc.ABC):
    """A stateful decoder: (tokens, mask, positions, state) -> (logits, new state).

    `spec` is the exported model's metadata (for PyTorch, what an export would write): the state tensors,
    their shapes and dtypes, and which inputs the graph takes. Nothing about the layout is guessed.
    """

    name: str = "backend"
    spec: ExportMetadata

    @abc.abstractmethod
    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: Optional[np.ndarray],
            state: State) -> Tuple[np.ndarray, State]:
        """input_ids [B, T] int64; attention_mask [B, T] (nonzero = real token); position_ids [B, T] or None.
        Returns logits [B, T, V] float32 on the host and the new state (backend-native)."""

    @abc.abstractmethod
    def to_host(self, state: State) -> List[np.ndarray]:
        """The state as numpy arrays, in spec.state order (the portable form)."""

    @abc.abstractmethod
    def from_host(self, arrays: Sequence[np.ndarray]) -> State:
        """Backend-native state from numpy arrays in spec.state order."""

    # Defaults in terms of the host form; device backends override to stay on the device.
    def zeros_state(self, batch: int) -> State:
        return self.from_host([np.zeros([batch, *s.shape[1:]], dtype=np.float32) for s in self.spec.state])

    def batch_size(self, state: State) -> int:
        return int(self.to_host(state)[0].shape[0])

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

    def check_state(self, arrays: Sequence[np.ndarray], batch: Optional[int] = None) -> None:
        """Raise InputError unless arrays match spec.state in count, shape and dtype (and batch)."""
        if len(arrays) != len(self.spec.state):
            raise InputError(f"state has {len(arrays)} tensors, the model has {len(self.spec.state)}")
        for a, s in zip(arrays, self.spec.state):
            want = [batch if isinstance(d, str) else d for d in s.shape]
            got = list(a.shape)
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                raise InputError(f"state {s.input} has shape {got}, expected {s.shape}" + (f" with batch {batch}" if batch else ""))
            if str(a.dtype) != s.dtype:
                raise InputError(f"state {s.input} has dtype {a.dtype}, expected {s.dtype}")
