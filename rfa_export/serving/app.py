"""The OpenAI-compatible HTTP API over an Engine (FastAPI): POST /v1/completions (text or token-id prompts,
max_tokens, temperature, top_p, top_k, seed, stop, n, stream with server-sent events, usage), GET /v1/models,
GET /health and GET /metrics (Prometheus text). Every bad request gets a 4xx with an OpenAI-style error body
and the server keeps serving. What each route means is serving/completions.py; this file is the FastAPI
wiring and the construction of a server's API from its command-line options."""

import asyncio
from typing import Optional

from .completions import CompletionsAPI, Limits, RequestError
from .engine import Engine


_PROCESS_API: Optional[CompletionsAPI] = None


def set_process_api(api: CompletionsAPI) -> None:
    """The API of this process, for apps that carry none in their state: a Ray Serve replica serves its own
    copy of the app object, unpickled apart from the one its constructor can reach."""
    global _PROCESS_API
    _PROCESS_API = api


def _api(request) -> CompletionsAPI:
    api = getattr(request.app.state, "api", None) or _PROCESS_API
    if api is None:
        raise RequestError(503, "the server is starting", kind="server_error")
    return api


def make_app(lifespan=None):
    """The FastAPI app with every route; a request finds its CompletionsAPI in app.state.api, or the one
    set for the process (set_process_api)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI(title="rfa-export", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def refused(_request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.post("/v1/completions")
    async def completions(request: Request):
        api = _api(request)
        parsed = api.parse(await request.body())
        handles = api.submit(parsed)
        if parsed.stream:
            return StreamingResponse(api.stream(parsed, handles), media_type="text/event-stream")
        work = asyncio.create_task(api.complete(parsed, handles))
        while not work.done():  # a client that goes away frees its slots
            done, _ = await asyncio.wait({work}, timeout=0.25)
            if not done and await request.is_disconnected():
                for h in handles:
                    h.cancel()
                work.cancel()
                return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
        return JSONResponse(work.result())

    @app.get("/v1/models")
    async def models(request: Request):
        api = _api(request)
        return {"object": "list", "data": [{"id": api.model_name, "object": "model", "created": api.created,
                                            "owned_by": "rfa-export"}]}

    @app.get("/health")
    async def health(request: Request):
        api = _api(request)
        return {"status": "ok", "model": api.model_name, "fingerprint": api.fingerprint}

    @app.get("/metrics")
    async def metrics(request: Request):
        m = _api(request).engine.metrics()
        lines = []
        for name, kind, help_text in METRICS:
            lines += [f"# HELP rfa_{name} {help_text}", f"# TYPE rfa_{name} {kind}", f"rfa_{name} {m[name]}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app


METRICS = (("requests_total", "counter", "completion requests accepted"),
           ("requests_finished", "counter", "requests that ended normally"),
           ("requests_failed", "counter", "requests that ended with an error"),
           ("requests_cancelled", "counter", "requests whose client went away"),
           ("requests_rejected", "counter", "requests refused because the queue was full"),
           ("generated_tokens_total", "counter", "tokens generated"),
           ("tokens_per_second", "gauge", "tokens generated per second over the last 10 s"),
           ("queue_depth", "gauge", "requests waiting for a slot"),
           ("active_sequences", "gauge", "sequences in the running batch"),
           ("batch_occupancy", "gauge", "active sequences / max batch"))


def create_app(engine: Engine, model_name: str, limits: Limits = Limits(), fingerprint: Optional[str] = None):
    """One server: the app with its API, the engine started and stopped with the app."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        engine.start()
        yield
        engine.stop()

    app = make_app(lifespan)
    app.state.api = CompletionsAPI(engine, model_name, limits, fingerprint)
    return app


def api_from_options(options: dict, fingerprint: Optional[str] = None) -> CompletionsAPI:
    """The CompletionsAPI (engine not started) of one server or Ray replica, from the options that
    rfa_export.cli.serve_cmd.server_options builds from the command line."""
    from ..runtime import Decoder, open_backend

    extra = {name: options[name] for name in ("tokenizer", "threads") if options.get(name)}
    extra.update(options.get("backend_options", {}))
    backend = open_backend(options["backend"], options["out_dir"], checkpoint=options["checkpoint"],
                           device=options["device"], **extra)
    engine = Engine(Decoder(backend), options["max_batch"], options["max_queue"])
    limits = Limits(max_tokens=options["max_tokens"], max_prompt_tokens=options["max_prompt_tokens"])
    return CompletionsAPI(engine, options["model_name"], limits, fingerprint)


def app_from_options(options: dict, fingerprint: Optional[str] = None):
    """The FastAPI app of one server, its engine started and stopped with it."""
    api = api_from_options(options, fingerprint)
    return create_app(api.engine, api.model_name, api.limits, api.fingerprint)
