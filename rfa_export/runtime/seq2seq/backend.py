"""The encoder-decoder backend interface: encode sources once into cross states, decode target chunks against
self and cross states."""

import abc
from typing import Any, List, Optional, Tuple

import numpy as np

from ...format.seq2seq_metadata import Seq2SeqExportMetadata


class Seq2SeqBackend(abc.ABC):
    """encode: sources -> cross states (native); decode: a chunk of target tokens against self and cross states.
    Decoder rows are grouped by source: decoder_batch = sources x rows per source, one source's rows contiguous."""

    name = "backend"
    spec: Seq2SeqExportMetadata
    tokenizer_path = None

    @abc.abstractmethod
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        """[B, S] int64 twice -> cross states (one per decoder layer, [B, H, F, Dv + 1])."""

    @abc.abstractmethod
    def decode(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: Optional[np.ndarray],
               state: Any, cross: Any) -> Tuple[np.ndarray, Any]:
        """[Bd, T] int64 -> (logits [Bd, T, V] float32 on the host, new self states)."""

    @abc.abstractmethod
    def zeros_state(self, rows: int) -> Any: ...

    @abc.abstractmethod
    def select(self, states: Any, rows: np.ndarray) -> Any:
        """Rows of a list of native tensors (self states: beam reordering; cross states: dropping sources)."""

    @abc.abstractmethod
    def to_host(self, states: Any) -> List[np.ndarray]: ...

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def needs_positions(self) -> bool:
        return self.spec.model_config.positional != "none"
