"""The serving engine: one scheduler thread drives a ContinuousBatch. A request joins the running batch at the
next step (after its prefill) and leaves as soon as it finishes or is cancelled (its client went away).
Admission is by slot count: every sequence's state has the same fixed size, so `max_batch` sequences fit
whatever their lengths; requests beyond them wait in a bounded queue, and beyond the queue are refused."""

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Sequence, Tuple, Union

from ..runtime.backend import InputError, NonFiniteError
from ..runtime.batch import ContinuousBatch, RequestSpec
from ..runtime.decoder import Decoder, TokenEvent
from ..runtime.sampling import SamplingParams


class QueueFull(RuntimeError):
    """More requests are waiting than the engine queues."""


@dataclass
class GenerationRequest:
    prompt: Union[str, Sequence[int]]
    max_tokens: int
    sampling: SamplingParams
    stop_strings: Tuple[str, ...] = ()
    stop_tokens: Tuple[int, ...] = ()


@dataclass
class Outcome:
    """What a finished request produced."""

    tokens: List[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None  # "length", "stop_token", "stop_string", "cancelled" or "error"
    error: Optional[str] = None
    prompt_tokens: int = 0


class RequestHandle:
    """The client side of one request: `events` yields TokenEvents as they come (in the caller's asyncio loop);
    `outcome` is set when the request ends. cancel() takes it out of the batch at the next step."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.outcome = Outcome()
        self.cancelled = False
        self.done = asyncio.Event()

    def cancel(self) -> None:
        self.cancelled = True

    def _receive(self, event: Optional[TokenEvent]) -> None:
        """In the handle's loop: one event, or None when the request has ended."""
        self.queue.put_nowait(event)
        if event is None:
            self.done.set()

    async def events(self):
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event


class Engine:
    def __init__(self, decoder: Decoder, max_batch: int = 64, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        self.decoder = decoder
        self.max_batch, self.max_queue = max_batch, max_queue
        self.batch = ContinuousBatch(decoder)
        self._pending: Deque[RequestHandle] = collections.deque()
        self._active: Dict[int, RequestHandle] = {}
        self._wake = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stop = False
        self.counters = collections.Counter()
        self._token_times: Deque[Tuple[float, int]] = collections.deque()
        self._outbox: List[Tuple[RequestHandle, Optional[TokenEvent]]] = []

    # --- the caller's side (any thread) ------------------------------------------------------------------------

    def start(self) -> "Engine":
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="rfa-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, request: GenerationRequest, loop: Optional[asyncio.AbstractEventLoop] = None) -> RequestHandle:
        handle = RequestHandle(request, loop or asyncio.get_running_loop())
        with self._wake:
            if len(self._pending) >= self.max_queue:
                self.counters["rejected"] += 1
                raise QueueFull(f"{len(self._pending)} requests are already waiting (the queue holds {self.max_queue})")
            self._pending.append(handle)
            self.counters["requests"] += 1
            self._wake.notify()
        return handle

    def metrics(self) -> Dict[str, float]:
        now = time.monotonic()
        recent = [n for t, n in list(self._token_times) if now - t <= 10.0]
        return {
            "requests_total": self.counters["requests"], "requests_finished": self.counters["finished"],
            "requests_failed": self.counters["failed"], "requests_cancelled": self.counters["cancelled"],
            "requests_rejected": self.counters["rejected"], "generated_tokens_total": self.counters["tokens"],
            "tokens_per_second": sum(recent) / 10.0, "queue_depth": len(self._pending),
            "active_sequences": len(self._active), "batch_occupancy": len(self._active) / self.max_batch,
            "max_batch": self.max_batch,
        }

    # --- the scheduler thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._pending and not self._active:
                    self._wake.wait()
                if self._stop:
                    break
                admit = []
                while self._pending and len(self._active) + len(admit) < self.max_batch:
                    admit.append(self._pending.popleft())
            if admit:
                self._admit(admit)
            for rid, handle in list(self._active.items()):
                if handle.cancelled:
                    self.batch.remove(rid)
                    self._end(rid, "cancelled")
            if self._active:
                self._step()
            self._deliver()
        for rid in list(self._active):
            self._end(rid, "cancelled")
        while self._pending:
            handle = self._pending.popleft()
            handle.outcome.finish_reason = "cancelled"
            self._outbox.append((handle, None))
        self._deliver()

    def _deliver(self) -> None:
        """Hands a step's events to their handles: one wake-up per event loop, not one per token (at 32 streams
        per step the per-token wake-ups cost more than the model's step on a small CPU)."""
        by_loop: Dict[asyncio.AbstractEventLoop, list] = {}
        for handle, event in self._outbox:
            by_loop.setdefault(handle.loop, []).append((handle, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_receive_all, items)
            except RuntimeError:  # that loop has closed: its clients are gone
                pass

    def _admit(self, handles: List[RequestHandle]) -> None:
        """Prefills the newly admitted requests together, in groups of similar prompt lengths (a group's
        prompts are padded to its longest); a group with an invalid request is retried one by one, so that
        only the invalid one fails."""
        going = []
        for handle in handles:
            if handle.cancelled:
                handle.outcome.finish_reason = "cancelled"
                self.counters["cancelled"] += 1
                self._outbox.append((handle, None))
                continue
            try:
                handle.outcome.prompt_tokens = len(self.decoder.encode(handle.request.prompt))
            except InputError as e:
                self._fail(handle, str(e))
                continue
            going.append(handle)
        going.sort(key=lambda h: h.outcome.prompt_tokens)
        group: List[RequestHandle] = []
        for handle in going:
            if group and handle.outcome.prompt_tokens > 2 * group[0].outcome.prompt_tokens + 16:
                self._join(group)
                group = []
            group.append(handle)
        if group:
            self._join(group)

    def _join(self, handles: List[RequestHandle]) -> None:
        try:
            rids = self.batch.add_requests([self._spec(h.request) for h in handles])
        except (InputError, NonFiniteError) as e:
            if len(handles) == 1:
                self._fail(handles[0], str(e))
            else:
                for handle in handles:
                    self._join([handle])
            return
        for rid, handle in zip(rids, handles):
            self._active[rid] = handle

    @staticmethod
    def _spec(r: GenerationRequest) -> RequestSpec:
        seed = None if r.sampling.seed is None else [r.sampling.seed, 0]
        return RequestSpec(r.prompt, r.max_tokens, r.sampling, r.stop_tokens, r.stop_strings, seed)

    def _fail(self, handle: RequestHandle, error: str) -> None:
        handle.outcome.finish_reason, handle.outcome.error = "error", error
        self.counters["failed"] += 1
        self._outbox.append((handle, None))

    def _step(self) -> None:
        try:
            events = self.batch.step()
        except Exception as e:  # the model failed (a device error): the step changed nothing; fail what runs
            for rid in list(self._active):
                self.batch.remove(rid)
                self._end(rid, "error", f"the model failed: {' '.join(str(e).split())[:300]}")
            return
        produced = 0
        for event in events:
            handle = self._active.get(event.index)
            if handle is None:
                continue
            if event.token is not None:
                produced += 1
                handle.outcome.tokens.append(event.token)
                handle.outcome.text += event.text
            self._outbox.append((handle, event))
            if event.finished is not None:
                self._end(event.index, event.finished, event.error)
        self.counters["tokens"] += produced
        self._token_times.append((time.monotonic(), produced))
        while self._token_times and time.monotonic() - self._token_times[0][0] > 10.0:
            self._token_times.popleft()

    def _end(self, rid: int, reason: str, error: Optional[str] = None) -> None:
        handle = self._active.pop(rid)
        self.batch.results.pop(rid, None)  # a server runs for long: keep no finished results
        handle.outcome.finish_reason, handle.outcome.error = reason, error
        self.counters["failed" if reason == "error" else "cancelled" if reason == "cancelled" else "finished"] += 1
        self._outbox.append((handle, None))


def _receive_all(items) -> None:
    for handle, event in items:
        handle._receive(event)
