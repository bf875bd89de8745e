"""The OpenAI completions API without its web framework: a request body parsed and checked (every bad field an
OpenAI-style error with its status), submitted to an Engine, and answered whole or as server-sent events, with
OpenAI's rules for stop sequences, usage and finish reasons. serving/app.py puts it behind FastAPI."""

import asyncio
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..runtime.backend import InputError
from ..runtime.sampling import SamplingParams
from .engine import Engine, GenerationRequest, QueueFull


MAX_STOP_SEQUENCES = 4
FINISH_REASONS = {"length": "length", "stop_token": "stop", "stop_string": "stop"}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 4096  # the most new tokens one request may ask for
    max_prompt_tokens: int = 65536
    max_n: int = 16
    default_max_tokens: int = 16  # OpenAI's default


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, message, the offending parameter."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error",
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _number(body, name, default, low, high, integer=False, low_open=False):
    value = body.get(name, default)
    if value is None:
        value = default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok_type or isinstance(value, bool) or (not integer and not math.isfinite(value)) or \
            not ((value > low) if low_open else (value >= low)) or value > high:
        kind = "an integer" if integer else "a number"
        raise RequestError(400, f"{name} must be {kind} in {'(' if low_open else '['}{low}, {high}], got {value!r}", name)
    return value


@dataclass
class ParsedRequest:
    prompts: List[Any]  # each a str or a list of token ids
    n: int
    max_tokens: int
    sampling: SamplingParams
    stop: Tuple[str, ...]
    stream: bool
    include_usage: bool


class CompletionsAPI:
    def __init__(self, engine: Engine, model_name: str, limits: Limits = Limits(), fingerprint: Optional[str] = None):
        self.engine, self.model_name, self.limits = engine, model_name, limits
        self.fingerprint = fingerprint or f"rfa-export-{os.getpid()}"
        self.created = int(time.time())

    # --- parsing -------------------------------------------------------------------------------------------------

    def parse(self, raw: bytes) -> ParsedRequest:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(400, f"the request body is not UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise RequestError(400, f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise RequestError(400, "model is required (a string)", "model")
        if model != self.model_name:
            raise RequestError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                               "model", code="model_not_found")
        for name, allowed in (("echo", (None, False)), ("logprobs", (None,)), ("suffix", (None, "")),
                              ("presence_penalty", (None, 0, 0.0)), ("frequency_penalty", (None, 0, 0.0)),
                              ("logit_bias", (None, {}))):
            if body.get(name) not in allowed:
                raise RequestError(400, f"{name} is not supported by this server", name)
        n = _number(body, "n", 1, 1, self.limits.max_n, integer=True)
        if body.get("best_of") not in (None, n):
            raise RequestError(400, "best_of is not supported by this server (beyond best_of = n)", "best_of")
        max_tokens = _number(body, "max_tokens", self.limits.default_max_tokens, 1, self.limits.max_tokens, integer=True)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        top_k = _number(body, "top_k", 0, 0, 2**31 - 1, integer=True)
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
            raise RequestError(400, f"seed must be an integer in [0, 2^63), got {seed!r}", "seed")
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(400, f"stop must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them", "stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, "stream must be true or false", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError(400, "stream_options must be an object", "stream_options")
        return ParsedRequest(self._prompts(body.get("prompt")), n, max_tokens,
                             SamplingParams(temperature, top_k, top_p, seed), tuple(stop), stream,
                             bool(options.get("include_usage", False)))

    def _prompts(self, prompt) -> List[Any]:
        """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            prompts = prompt
        else:
            raise RequestError(400, "prompt must be a string, a list of strings, a list of token ids or a list of "
                                    "such lists", "prompt")
        decoder = self.engine.decoder
        for i, p in enumerate(prompts):
            try:
                n = len(decoder.encode(p, i))
            except InputError as e:
                raise RequestError(400, str(e), "prompt") from None
            if n > self.limits.max_prompt_tokens:
                raise RequestError(400, f"prompt {i} has {n} tokens, more than this server's limit of "
                                        f"{self.limits.max_prompt_tokens}", "prompt", code="context_length_exceeded")
        return prompts

    # --- running ----------------------------------------------------------------------------------------------

    def submit(self, parsed: ParsedRequest):
        """One engine request per (prompt, sample): choice index = prompt index x n + sample index."""
        handles = []
        try:
            for p in parsed.prompts:
                for j in range(parsed.n):
                    s = parsed.sampling
                    if s.seed is not None and parsed.n > 1:
                        s = SamplingParams(s.temperature, s.top_k, s.top_p, (s.seed + j) % 2**63)
                    handles.append(self.engine.submit(GenerationRequest(p, parsed.max_tokens, s, parsed.stop)))
        except QueueFull as e:
            for h in handles:
                h.cancel()
            raise RequestError(429, f"the server is busy: {e}; retry later", kind="rate_limit_error",
                               code="queue_full") from None
        return handles

    def _envelope(self, completion_id: str) -> Dict[str, Any]:
        return {"id": completion_id, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
                "system_fingerprint": self.fingerprint}

    @staticmethod
    def _usage(handles, n: int) -> Dict[str, int]:
        """Prompt tokens once per prompt (its n samples share it), completion tokens of every sample."""
        prompt = sum(h.outcome.prompt_tokens for h in handles[::n])
        completion = sum(len(h.outcome.tokens) for h in handles)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _failure(handles) -> Optional[RequestError]:
        for h in handles:
            if h.outcome.finish_reason == "error":
                return RequestError(500 if "the model failed" in (h.outcome.error or "") else 400,
                                    h.outcome.error or "generation failed", kind="server_error"
                                    if "the model failed" in (h.outcome.error or "") else "invalid_request_error")
        return None

    async def complete(self, parsed: ParsedRequest, handles) -> Dict[str, Any]:
        await asyncio.gather(*(h.done.wait() for h in handles))
        failure = self._failure(handles)
        if failure is not None:
            raise failure
        choices = []
        for i, h in enumerate(handles):
            trimmer = StopTrimmer(parsed.stop)
            text = trimmer.feed(h.outcome.text) + trimmer.finish(h.outcome.finish_reason)
            choices.append({"index": i, "text": text, "logprobs": None,
                            "finish_reason": FINISH_REASONS.get(h.outcome.finish_reason, h.outcome.finish_reason)})
        return {**self._envelope(f"cmpl-{uuid.uuid4().hex}"), "choices": choices, "usage": self._usage(handles, parsed.n)}

    async def stream(self, parsed: ParsedRequest, handles):
        """Server-sent events: one chunk per piece of text of any choice, the finish reason in its last chunk, an
        optional usage chunk, then [DONE]. Text that may be the start of a stop sequence is held back."""
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index, handle):
            trimmer = StopTrimmer(parsed.stop)
            async for event in handle.events():
                piece = trimmer.feed(event.text) if event.token is not None else ""
                if event.finished is not None:
                    piece += trimmer.finish(event.finished)
                if piece or event.finished is not None:
                    await queue.put((index, piece, event.finished, event.error))
            if handle.outcome.finish_reason == "cancelled":
                await queue.put((index, "", "cancelled", None))
            await queue.put(None)

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
        try:
            remaining = len(tasks)
            while remaining:
                # what has piled up since the last write goes out in one write, a choice's pieces as one chunk
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                remaining -= sum(item is None for item in items)
                events = []
                for index, piece, finished, error in _coalesce([item for item in items if item is not None]):
                    if finished == "error":
                        events.append(json.dumps(RequestError(400, error or "generation failed").body()))
                        continue
                    reason = FINISH_REASONS.get(finished, finished) if finished else None
                    events.append(json.dumps({**self._envelope(completion_id), "choices": [
                        {"index": index, "text": piece, "logprobs": None, "finish_reason": reason}]}))
                if events:
                    yield "".join(f"data: {e}\n\n" for e in events)
            if parsed.include_usage:
                yield f"data: {json.dumps({**self._envelope(completion_id), 'choices': [], 'usage': self._usage(handles, parsed.n)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:  # the client went away (or the stream ended): free the slots now
                h.cancel()
            for t in tasks:
                t.cancel()


def _coalesce(items):
    """(index, piece, finished, error) items in order -> the same with each choice's consecutive pieces joined;
    a choice's finish (or error) closes its run."""
    merged, open_run = [], {}
    for index, piece, finished, error in items:
        if index in open_run:
            at = open_run[index]
            merged[at] = (index, merged[at][1] + piece, finished, error)
        else:
            merged.append((index, piece, finished, error))
            open_run[index] = len(merged) - 1
        if finished is not None:
            del open_run[index]
    return merged


class StopTrimmer:
    """OpenAI's rule for stop sequences: the returned text ends before the first stop sequence. Text that could
    still be the beginning of one is held back until the next piece (or the end) decides."""

    def __init__(self, stops):
        self.stops = tuple(stops)
        self.hold = ""
        self.keep = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.hold += piece
        cut = self._first_stop()
        if cut is not None:
            self.hold = self.hold[:cut]
            self.stops = ()  # everything after the stop is dropped
            out, self.hold = self.hold, ""
            return out
        if len(self.hold) <= self.keep:
            return ""
        out, self.hold = self.hold[: len(self.hold) - self.keep], self.hold[len(self.hold) - self.keep:]
        return out

    def finish(self, reason: Optional[str]) -> str:
        out, self.hold = self.hold, ""
        return out

    def _first_stop(self) -> Optional[int]:
        hits = [self.hold.find(s) for s in self.stops if s in self.hold]
        return min(hits) if hits else None
