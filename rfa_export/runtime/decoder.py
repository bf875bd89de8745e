"""Decoder: prefill, step and generate with the same API on every backend."""

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backend import MAX_POSITION, DecoderBackend, InputError, NonFiniteError, as_token_array
from .sampling import SamplingParams, check_int, log_softmax
from .tokenizer import load_tokenizer

Prompt = Union[str, Sequence[int]]
DEFAULT_PREFILL_CHUNK = 512
MAX_NEW_TOKENS = 2**31 - 1


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
    token: Optional[int]  # None on an "error" event
    text: str  # the text this token completes ("" while a multi-byte character is incomplete)
    finished: Optional[str] = None  # "length", "stop_token", "stop_string" or "error" on the sequence's last event
    error: Optional[str] = None  # why the sequence failed (finished == "error")


@dataclass
class GenerationResult:
    index: int
    tokens: List[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    error: Optional[str] = None


class Decoder:
    """tokenizer: by default the model's own (the export's tokenizer.json, else byte-level for vocab-256
    models, else none: token ids only). prefill_chunk: prompts are run through the model this many tokens at
    a time, so prefill memory is bounded by the chunk, not the prompt (the state carries everything between
    chunks)."""

    def __init__(self, backend: DecoderBackend, tokenizer=None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        self.backend = backend
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(backend.tokenizer_path, backend.vocab_size)
        self.prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1, MAX_POSITION)

    # --- inputs -------------------------------------------------------------------------------------

    def encode(self, prompt: Prompt, index: int = 0) -> List[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError(f"the model has vocab {self.backend.vocab_size} and no tokenizer: pass token ids, or "
                                 "export it with --tokenizer tokenizer.json")
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (bytes, bytearray)):
            raise InputError(f"prompt {index} is bytes: pass text (str) or a list of token ids")
        else:
            ids = as_token_array(prompt, f"prompt {index}", self.backend.vocab_size)
            if ids.ndim > 1:
                raise InputError(f"prompt {index} must be one list of token ids, got shape {list(ids.shape)}")
            ids = ids.tolist()
        if not ids:
            raise InputError(f"prompt {index} is empty")
        self.check_tokens(ids, f"prompt {index}")
        return [int(t) for t in ids]

    def check_tokens(self, ids, what: str) -> np.ndarray:
        return as_token_array(ids, what, self.backend.vocab_size)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    def new_state(self, batch: int) -> DecodeState:
        batch = check_int("batch", batch, 1, MAX_POSITION)
        return DecodeState(self.backend.zeros_state(batch), np.zeros(batch, np.int64))

    def state_from_arrays(self, arrays: Sequence[np.ndarray], positions: Sequence[int]) -> DecodeState:
        """A DecodeState from host arrays, checked against the model's state spec (count, shape, dtype,
        batch, every value finite) and positions (non-negative integers)."""
        positions = _positions(positions)
        self.backend.check_state(arrays, batch=positions.shape[0])
        return DecodeState(self.backend.from_host(arrays), positions)

    def _check_decode_state(self, state: DecodeState) -> None:
        if not isinstance(state, DecodeState):
            raise InputError(f"state must be a DecodeState (from prefill, new_state or state_from_arrays), "
                             f"got {type(state).__name__}")
        _positions(state.positions)
        self.backend.check_state_shapes(self.backend.state_shapes(state.state), state.batch)

    # --- the three verbs ----------------------------------------------------------------------------

    def prefill(self, prompts: Sequence[Prompt], state: Optional[DecodeState] = None) -> Tuple[DecodeState, np.ndarray]:
        """Run prompts of any lengths as one right-padded batch (padding leaves the state unchanged, so each
        row equals the prompt run alone), `prefill_chunk` tokens at a time. Continues `state` when given.
        Returns (state, last logits [B, V])."""
        if isinstance(prompts, (str, bytes)):
            raise InputError("prompts must be a list (of strings or of token-id lists)")
        encoded = [self.encode(p, i) for i, p in enumerate(prompts)]
        if not encoded:
            raise InputError("no prompts")
        B = len(encoded)
        if state is None:
            state = self.new_state(B)
        else:
            self._check_decode_state(state)
            if state.batch != B:
                raise InputError(f"{B} prompts but the state holds {state.batch} sequences")
        lengths = np.array([len(e) for e in encoded], np.int64)
        L = int(lengths.max())
        if int(state.positions.max()) + L > MAX_POSITION:
            raise InputError(f"positions would pass {MAX_POSITION}")
        ids = np.zeros((B, L), np.int64)
        mask = np.zeros((B, L), np.int64)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
            mask[b, : len(e)] = 1
        positions = state.positions[:, None] + np.arange(L)[None]
        last = None
        current = state.state
        for start in range(0, L, self.prefill_chunk):
            end = min(L, start + self.prefill_chunk)
            pos = positions[:, start:end] if self.backend.needs_positions else None
            logits, current = self.backend.run(ids[:, start:end], mask[:, start:end], pos, current)
            if last is None:
                last = np.empty((B, logits.shape[-1]), np.float32)
            rows = np.nonzero((lengths - 1 >= start) & (lengths - 1 < end))[0]
            last[rows] = logits[rows, lengths[rows] - 1 - start]
        return DecodeState(current, state.positions + lengths), last

    def step(self, tokens: Sequence[int], state: DecodeState) -> Tuple[np.ndarray, DecodeState]:
        """Feed one token per sequence. tokens [B] -> (logits [B, V], state)."""
        self._check_decode_state(state)
        tokens = self.check_tokens(tokens, "step tokens")
        if tokens.ndim != 1 or tokens.shape[0] != state.batch:
            raise InputError(f"{tokens.size} tokens for a state of {state.batch} sequences")
        if int(state.positions.max()) >= MAX_POSITION:
            raise InputError(f"positions would pass {MAX_POSITION}")
        B = state.batch
        pos = state.positions[:, None] if self.backend.needs_positions else None
        logits, new = self.backend.run(tokens[:, None], np.ones((B, 1), np.int64), pos, state.state)
        return logits[:, 0], DecodeState(new, state.positions + 1)

    def select(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        rows = np.asarray(rows)
        if rows.size and (rows.dtype.kind not in "iu" or rows.min() < 0 or rows.max() >= state.batch):
            raise InputError(f"rows must be integers in [0, {state.batch}), got {rows.tolist()}")
        rows = rows.astype(np.int64).reshape(-1)
        return DecodeState(self.backend.select(state.state, rows), state.positions[rows])

    def stream(self, prompts: Sequence[Prompt], max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
               stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
               seeds: Optional[Sequence[int]] = None) -> Iterator[TokenEvent]:
        """Yield tokens as they are generated, for every prompt of the batch (see ContinuousBatch). A
        sequence whose logits are not finite raises NonFiniteError naming it."""
        from .batch import ContinuousBatch

        batch = ContinuousBatch(self)
        batch.add_many(prompts, max_new_tokens, sampling, stop_tokens, stop_strings, seeds)
        while batch.active:
            for event in batch.step():
                if event.finished == "error":
                    raise NonFiniteError(event.error)
                yield event
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
        num_beams = check_int("num_beams", num_beams, 1, self.backend.vocab_size)
        check_max_new(max_new_tokens)
        if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) or not np.isfinite(length_penalty):
            raise InputError(f"length_penalty must be a finite number, got {length_penalty!r}")
        stop = set(self.check_tokens(list(stop_tokens), "stop_tokens").tolist())
        state, logits = self.prefill([prompt])
        beams: List[Tuple[List[int], float]] = [([], 0.0)]
        finished: List[Tuple[List[int], float]] = []
        for _ in range(max_new_tokens):
            if not np.isfinite(logits).all():
                raise NonFiniteError("beam search: logits contain NaN or infinity (the state or the weights are not finite)")
            logp = log_softmax(logits)  # [k, V]
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


def _positions(positions) -> np.ndarray:
    arr = np.asarray(positions)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise InputError(f"positions must be a non-empty list of integers, got {arr.dtype} {list(arr.shape)}")
    if arr.min() < 0 or arr.max() > MAX_POSITION:
        raise InputError(f"positions must lie in [0, {MAX_POSITION}]")
    return arr.astype(np.int64)


def check_max_new(max_new_tokens) -> int:
    return check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
