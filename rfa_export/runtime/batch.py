"""Continuous batching: sequences join and leave a running batch without disturbing the others."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .backend import InputError, NonFiniteError
from .decoder import Decoder, DecodeState, GenerationResult, Prompt, TokenEvent, check_max_new
from .sampling import SamplingParams, check_sampling, check_seeds, sample_token


@dataclass
class _Request:
    result: GenerationResult
    max_new_tokens: int
    sampling: SamplingParams
    stop_tokens: frozenset
    stop_strings: tuple
    rng: Optional[np.random.Generator]
    text_of: object  # IncrementalText, or None


@dataclass(frozen=True)
class RequestSpec:
    """One request for ContinuousBatch.add_requests. seed: its random stream's seed (an int or a sequence of
    ints, as numpy's default_rng takes); None draws fresh entropy. Greedy requests use no stream."""

    prompt: Prompt
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop_tokens: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    seed: Optional[object] = None


@dataclass
class _Draw:
    """One row's outcome of a step, not yet committed."""

    request_id: int
    token: Optional[int]
    piece: str = ""
    finished: Optional[str] = None
    error: Optional[str] = None


class ContinuousBatch:
    """Rows of one DecodeState, each owned by a request. `add` prefills new prompts and appends their rows;
    `step` samples one token for every row and advances them together; finished rows are dropped.

    A step is all-or-nothing: every row is sampled first and nothing is recorded until the model has
    advanced; if the model raises, the batch is left exactly as it was (random streams and partial
    characters included), so the step can be retried. A row whose logits are not finite fails alone: its
    request ends with finish_reason "error" and an event saying why, and the others go on."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.rows: List[int] = []  # request id of each row
        self.state: Optional[DecodeState] = None
        self.logits: Optional[np.ndarray] = None  # [rows, V]: the distribution of each row's next token
        self.requests: Dict[int, _Request] = {}
        self.results: Dict[int, GenerationResult] = {}
        self._next_id = 0

    @property
    def active(self) -> List[int]:
        return list(self.rows)

    def add(self, prompt: Prompt, max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
            stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (), seed: Optional[int] = None) -> int:
        """Prefill one prompt and join the batch; returns the request id."""
        return self.add_many([prompt], max_new_tokens, sampling, stop_tokens, stop_strings,
                             None if seed is None else [seed])[0]

    def add_many(self, prompts: Sequence[Prompt], max_new_tokens: int, sampling: SamplingParams = SamplingParams(),
                 stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
                 seeds: Optional[Sequence[int]] = None) -> List[int]:
        """Prefill prompts with the same settings together and join the batch; returns their request ids. The
        random stream of prompt i is seeded by seeds[i], else by (sampling.seed, i) when sampling.seed is set."""
        if isinstance(prompts, (str, bytes)):
            raise InputError("prompts must be a list (of strings or of token-id lists)")
        seeds = check_seeds(seeds, len(prompts), "prompt")
        if seeds is None and isinstance(sampling, SamplingParams) and sampling.seed is not None:
            seeds = [[sampling.seed, i] for i in range(len(prompts))]
        return self.add_requests([RequestSpec(p, max_new_tokens, sampling, stop_tokens, stop_strings,
                                              None if seeds is None else seeds[i]) for i, p in enumerate(prompts)])

    def add_requests(self, specs: Sequence["RequestSpec"]) -> List[int]:
        """Prefill requests with settings of their own in one padded prefill and join the batch; returns their
        request ids. Any invalid request raises InputError and none joins."""
        checked = [self._check(spec) for spec in specs]
        state, logits = self.decoder.prefill([spec.prompt for spec in specs])
        ids = []
        tok = self.decoder.tokenizer
        for spec, stops in zip(specs, checked):
            rid = self._next_id
            self._next_id += 1
            if spec.sampling.greedy:
                rng = None
            else:
                rng = np.random.default_rng(spec.seed)  # None: fresh entropy
            self.requests[rid] = _Request(GenerationResult(rid), spec.max_new_tokens, spec.sampling, stops,
                                          tuple(spec.stop_strings), rng,
                                          tok.incremental_decoder() if tok is not None else None)
            ids.append(rid)
        if self.state is None or not self.rows:
            self.state, self.logits = state, logits
        else:
            backend = self.decoder.backend
            self.state = DecodeState(backend.concat([self.state.state, state.state]),
                                     np.concatenate([self.state.positions, state.positions]))
            self.logits = np.concatenate([self.logits, logits], axis=0)
        self.rows += ids
        return ids

    def _check(self, spec: "RequestSpec") -> frozenset:
        """Validates a request's settings; returns its stop tokens."""
        check_max_new(spec.max_new_tokens)
        check_sampling(spec.sampling)
        stop_strings = spec.stop_strings
        if isinstance(stop_strings, str) or not all(isinstance(s, str) for s in stop_strings):
            raise InputError("stop_strings must be a list of strings")
        return frozenset(self.decoder.check_tokens(list(spec.stop_tokens), "stop_tokens").tolist())

    def remove(self, request_id: int) -> GenerationResult:
        """Take a request out of the batch now (its tokens so far are its result)."""
        if request_id not in self.rows:
            raise InputError(f"request {request_id} is not in the batch")
        self._keep([r for r in self.rows if r != request_id])
        req = self.requests.pop(request_id)
        req.result.finish_reason = req.result.finish_reason or "removed"
        self.results[request_id] = req.result
        return req.result

    def step(self) -> List[TokenEvent]:
        """One token for every active request (or an "error" event for a request whose logits are not
        finite). If the model raises, nothing has changed and the exception propagates."""
        if not self.rows:
            return []
        saved = {rid: self._save(self.requests[rid]) for rid in self.rows}
        draws = [self._draw(row, rid) for row, rid in enumerate(self.rows)]
        going = [d for d in draws if d.finished is None]
        try:
            if going:
                rows = [row for row, d in enumerate(draws) if d.finished is None]
                state = self.state if len(going) == len(self.rows) else self.decoder.select(self.state, rows)
                logits, state = self.decoder.step([d.token for d in going], state)
        except BaseException:
            for rid, snapshot in saved.items():
                self._restore(self.requests[rid], snapshot)
            raise
        events = []
        for d in draws:
            req = self.requests[d.request_id]
            res = req.result
            if d.token is not None:
                res.tokens.append(d.token)
                res.text += d.piece
            res.finish_reason, res.error = d.finished, d.error
            events.append(TokenEvent(d.request_id, d.token, d.piece, d.finished, d.error))
            if d.finished is not None:
                self.results[d.request_id] = res
                del self.requests[d.request_id]
        self.rows = [d.request_id for d in going]
        self.state, self.logits = (state, logits) if going else (None, None)
        return events

    def _draw(self, row: int, rid: int) -> _Draw:
        req = self.requests[rid]
        try:
            token = sample_token(self.logits[row], req.sampling, req.rng)
        except NonFiniteError as e:
            return _Draw(rid, None, finished="error", error=f"request {rid}: {e}")
        piece = req.text_of(token) if req.text_of is not None else f"{token} "
        text = req.result.text + piece
        finished = None
        if token in req.stop_tokens:
            finished = "stop_token"
        elif any(s and s in text[-(len(s) + len(piece)):] for s in req.stop_strings):
            finished = "stop_string"
        elif len(req.result.tokens) + 1 >= req.max_new_tokens:
            finished = "length"
        return _Draw(rid, token, piece, finished)

    @staticmethod
    def _save(req: _Request):
        rng = req.rng.bit_generator.state if req.rng is not None else None
        return rng, req.text_of.state() if req.text_of is not None else None

    @staticmethod
    def _restore(req: _Request, saved) -> None:
        rng, text = saved
        if rng is not None:
            req.rng.bit_generator.state = rng
        if text is not None:
            req.text_of.restore(text)

    def _keep(self, request_ids: List[int]) -> None:
        rows = [self.rows.index(r) for r in request_ids]
        if rows:
            self.state = self.decoder.select(self.state, rows)
            self.logits = self.logits[rows]
        else:
            self.state, self.logits = None, None
        self.rows = list(request_ids)
