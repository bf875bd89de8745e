"""Continuous batching: sequences join and leave a running batch without disturbing the others."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .backend import InputError
from .decoder import Decoder, DecodeState, GenerationResult, Prompt, TokenEvent, _check_max_new
from .sampling import SamplingParams, sample_token


@dataclass
class _Request:
    result: GenerationResult
    max_new_tokens: int
    sampling: SamplingParams
    stop_tokens: frozenset
    stop_strings: tuple
    rng: Optional[np.random.Generator]
    text_of: object  # incremental decoder, or None


class ContinuousBatch:
    """Rows of one DecodeState, each owned by a request. `add` prefills new prompts and appends their rows;
    `step` samples one token for every row and advances them together; finished rows are dropped."""

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
        _check_max_new(max_new_tokens)
        if seeds is not None and len(seeds) != len(prompts):
            raise InputError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        self.decoder.check_tokens(list(stop_tokens), "stop_tokens")
        state, logits = self.decoder.prefill(prompts)
        ids = []
        for i in range(len(prompts)):
            rid = self._next_id
            self._next_id += 1
            if sampling.greedy:
                rng = None
            elif seeds is not None:
                rng = np.random.default_rng(seeds[i])
            elif sampling.seed is not None:
                rng = np.random.default_rng([sampling.seed, i])
            else:
                rng = np.random.default_rng()
            tok = self.decoder.tokenizer
            self.requests[rid] = _Request(GenerationResult(rid), max_new_tokens, sampling, frozenset(int(t) for t in stop_tokens),
                                          tuple(stop_strings), rng, tok.incremental_decoder() if tok is not None else None)
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
        """One token for every active request."""
        if not self.rows:
            return []
        events, tokens, keep = [], [], []
        for row, rid in enumerate(self.rows):
            req = self.requests[rid]
            token = sample_token(self.logits[row], req.sampling, req.rng)
            res = req.result
            res.tokens.append(token)
            piece = req.text_of(token) if req.text_of is not None else f"{token} "
            res.text += piece
            if token in req.stop_tokens:
                res.finish_reason = "stop_token"
            elif any(s and s in res.text[-(len(s) + len(piece)):] for s in req.stop_strings):
                res.finish_reason = "stop_string"
            elif len(res.tokens) >= req.max_new_tokens:
                res.finish_reason = "length"
            events.append(TokenEvent(rid, token, piece, res.finish_reason))
            if res.finish_reason is None:
                keep.append(rid)
                tokens.append(token)
            else:
                self.results[rid] = res
                del self.requests[rid]
        if len(keep) < len(self.rows):
            self._keep(keep)
        if self.rows:
            self.logits, self.state = self.decoder.step(tokens, self.state)
        return events

    def _keep(self, request_ids: List[int]) -> None:
        rows = [self.rows.index(r) for r in request_ids]
        if rows:
            self.state = self.decoder.select(self.state, rows)
            self.logits = self.logits[rows]
        else:
            self.state, self.logits = None, None
        self.rows = list(request_ids)
