"""Decoder: prefill, step and generate with the same API on every backend."""

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backend import DecoderBackend, InputError
from .sampling import SamplingParams
from .tokenizer import ByteTokenizer

Prompt = Union[str, Sequence[int]]


@dataclass
class DecodeState:
    """Where a batch of sequences stands: the backend-native recurrent state and, per sequence, the position
    of its next token. A backend may reuse the buffers of a state passed to `step` (device backends do), so
    keep a state you want to return to with `Decoder.snapshot`, not by holding on to it."""

    state: Any
    positions: np.ndarray  # [B] int64

    @property
    def batch(self) -> int:
        return int(self.positions.shape[0])


@dataclass
class TokenEvent:
    """One generated token of sequence `index` (the prompt's index in the call, or a request id)."""

    index: int
    token: int
    text: str  # the text this token completes ("" while a multi-byte character is incomplete)
    finished: Optional[str] = None  # "length", "stop_token" or "stop_string" on the sequence's last token


@dataclass
class GenerationResult:
    index: int
    tokens: List[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None


class Decoder:
    def __init__(self, backend: DecoderBackend, tokenizer=None):
        self.backend = backend
        self.tokenizer = tokenizer if tokenizer is not None else (ByteTokenizer() if backend.vocab_size == 256 else None)

    # --- inputs -------------------------------------------------------------------------------------

    def encode(self, prompt: Prompt, index: int = 0) -> List[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError(f"the model has vocab {self.backend.vocab_size}; text prompts need a tokenizer "
                                 "(byte-level models, vocab 256, have one built in): pass token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in np.asarray(prompt, dtype=np.int64).reshape(-1)]
        if not ids:
            raise InputError(f"prompt {index} is empty")
        self.check_tokens(ids, f"prompt {index}")
        return ids

    def check_tokens(self, ids, what: str) -> None:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.backend.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.backend.vocab_size)][0])
            raise InputError(f"{what}: token id {bad} is out of range [0, {self.backend.vocab_size})")

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    def new_state(self, batch: int) -> DecodeState:
        return DecodeState(self.backend.zeros_state(batch), np.zeros(batch, np.int64))

    def state_from_arrays(self, arrays: Sequence[np.ndarray], positions: Sequence[int]) -> DecodeState:
        """A DecodeState from host arrays (checked against the model's state spec)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        self.backend.check_state(arrays, batch=positions.shape[0])
        return DecodeState(self.backend.from_host(arrays), positions)

    # --- the three verbs ----------------------------------------------------------------------------

    def prefill(self, prompts: Sequence[Prompt], state: Optional[DecodeState] = None) -> Tuple[DecodeState, np.ndarray]:
        """Run prompts of any lengths as one right-padded batch (padding leaves the state unchanged, so each
        row equals the prompt run alone). Continues `state` when given. Returns (state, last logits [B, V])."""
        if isinstance(prompts, (str, bytes)):
            raise InputError("prompts must be a list (of strings or of token-id lists)")
        encoded = [self.encode(p, i) for i, p in enumerate(prompts)]
        if not encoded:
            raise InputError("no prompts")
        B = len(encoded)
        if state is None:
            state = self.new_state(B)
        elif state.batch != B:
            raise InputError(f"{B} prompts but the state holds {state.batch} sequences")
        lengths = np.array([len(e) for e in encoded], np.int64)
        L = int(lengths.max())
        ids = np.zeros((B, L), np.int64)
        mask = np.zeros((B, L), np.int64)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
            mask[b, : len(e)] = 1
        positions = state.positions[:, None] + np.arange(L)[None]
        logits, new = self.backend.run(ids, mask, positions if self.backend.needs_positions else None, state.state)
        last = logits[np.arange(B), lengths - 1]
        return DecodeState(new, state.positions + lengths), last

    def step(self, tokens: Sequence[int], state: DecodeState) -> Tuple[np.ndarray, DecodeState]:
        """Feed one token per sequence. tokens [B] -> (logits [B, V], state)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.shape[0] != state.batch:
            raise InputError(f"{tokens.shape[0]} tokens for a state of {state.batch} sequences")
        self.check_tokens(tokens, "step tokens")
        B = state.batch
        pos = state.positions[:, None] if self.backend.needs_positions else None
        logits, new = self.backend.run(tokens[:, None], np.ones((B, 1), np.int64), pos, state.state)
        return logits[:, 0], DecodeState(new, state.positions + 1)

    def select(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        rows = np.asarray(rows, dtype=np.int64)
        return DecodeState(self.backend.select(state.state, rows), state.positions[rows])

    def stream(self, prompts: Sequence[Prompt], max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
               stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
               seeds: Optional[Sequence[int]] = None) -> Iterator[TokenEvent]:
        """Yield tokens as they are generated, for every prompt of the batch (see ContinuousBatch)."""
        from .batch import ContinuousBatch

        batch = ContinuousBatch(self)
        batch.add_many(prompts, max_new_tokens, sampling, stop_tokens, stop_strings, seeds)
        while batch.active:
            yield from batch.step()
        self.last_results = [batch.results[i] for i in range(len(prompts))]

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
                 stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
                 seeds: Optional[Sequence[int]] = None) -> List[GenerationResult]:
        for _ in self.stream(prompts, max_new_tokens, sampling, stop_tokens, stop_strings, seeds):
            pass
        return self.last_results

    # --- beam search ---------------------------------------------------------------------------------

    def beam_search(self, prompt: Prompt, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                    stop_tokens: Sequence[int] = ()) -> List[Tuple[List[int], float]]:
        """Beam search that reorders the recurrent state with each step's surviving beams.
        Returns (tokens, score) best first; score = sum of log-probs / len(tokens) ** length_penalty."""
        if num_beams < 1:
            raise InputError(f"num_beams must be >= 1, got {num_beams}")
        _check_max_new(max_new_tokens)
        state, logits = self.prefill([prompt])
        beams: List[Tuple[List[int], float]] = [([], 0.0)]
        finished: List[Tuple[List[int], float]] = []
        stop = set(int(t) for t in stop_tokens)
        for _ in range(max_new_tokens):
            logp = _log_softmax(logits)  # [k, V]
            totals = np.array([s for _, s in beams])[:, None] + logp
            order = np.argsort(-totals, axis=None, kind="stable")[: 2 * num_beams]
            parents, tokens, scores = [], [], []
            for flat in order:
                parent, token = divmod(int(flat), logp.shape[1])
                seq = beams[parent][0] + [token]
                if token in stop:
                    finished.append((seq, float(totals[parent, token])))
                    continue
                parents.append(parent)
                tokens.append(token)
                scores.append(float(totals[parent, token]))
                if len(parents) == num_beams:
                    break
            if not parents:
                break
            beams = [(beams[p][0] + [t], s) for p, t, s in zip(parents, tokens, scores)]
            if len(beams[0][0]) == max_new_tokens:
                break
            state = self.select(state, parents)
            logits, state = self.step(tokens, state)
        candidates = finished + beams
        ranked = sorted(candidates, key=lambda c: -c[1] / max(1, len(c[0])) ** length_penalty)
        return [(seq, score / max(1, len(seq)) ** length_penalty) for seq, score in ranked[:num_beams]]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _check_max_new(max_new_tokens) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
