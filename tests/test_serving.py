"""The OpenAI-compatible server, tested with the official openai client: greedy output equals generate, streaming,
32 concurrent streaming clients, stops, n, token-id prompts, disconnects freeing their slots, metrics, and every
kind of bad request getting a 4xx with an OpenAI-style body while the server keeps serving."""

import asyncio
import json
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="openai not installed")
httpx = pytest.importorskip("httpx", reason="httpx not installed")
pytest.importorskip("fastapi", reason="FastAPI not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn not installed")

from rfa_export.runtime import Decoder, OnnxRuntimeBackend, SamplingParams  # noqa: E402
from rfa_export.serving.app import create_app  # noqa: E402
from rfa_export.serving.completions import Limits, StopTrimmer, _coalesce  # noqa: E402
from rfa_export.serving.engine import Engine, GenerationRequest  # noqa: E402

PROMPTS = ["The import statement", "A class definition", "Assignment statements are used to", "Exceptions",
           "def f(x):\n    return", "Comparisons", "the with statement", "Lambda expressions"]
MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, serving create_app for the duration of a test module."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def reference(bundled_export):
    return Decoder(OnnxRuntimeBackend(bundled_export))


@pytest.fixture(scope="module")
def server(bundled_export):
    engine = Engine(Decoder(OnnxRuntimeBackend(bundled_export)), max_batch=64, max_queue=64)
    with Server(create_app(engine, MODEL, Limits(max_tokens=512, max_prompt_tokens=2000))) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_greedy_completion_equals_generate(client, reference, capsys, bundled_export):
    from rfa_export.cli import main

    want = reference.generate(["The import statement"], 25)[0]
    resp = client.completions.create(model=MODEL, prompt="The import statement", max_tokens=25, temperature=0)
    assert resp.object == "text_completion" and resp.model == MODEL
    assert resp.choices[0].text == want.text and resp.choices[0].finish_reason == "length"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (20, 25, 45)
    assert main(["generate", str(bundled_export), "--prompt", "The import statement", "--max-new-tokens", "25"]) == 0
    assert capsys.readouterr().out == resp.choices[0].text + "\n"


def test_streaming_gives_the_same_text(client, reference):
    want = reference.generate(["A class definition"], 30)[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="A class definition", max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert chunks[-1].usage.completion_tokens == 30 and not chunks[-1].choices


def test_32_concurrent_streaming_clients(client, reference):
    prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(32)]
    want = [r.text for r in reference.generate(prompts, 40)]
    results = [None] * 32

    def run(i):
        stream = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=40, temperature=0, stream=True)
        results[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == want


def test_stop_n_seed_and_token_prompts(client, reference):
    full = reference.generate(["The import statement"], 40)[0].text
    stop = full[10:14]
    resp = client.completions.create(model=MODEL, prompt="The import statement", max_tokens=40, temperature=0, stop=[stop])
    assert resp.choices[0].text == full[: full.index(stop)] and resp.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="The import statement", max_tokens=40, temperature=0, stop=stop, stream=True))
    assert streamed == full[: full.index(stop)]
    sampled = client.completions.create(model=MODEL, prompt="Exceptions", max_tokens=20, temperature=0.8, n=3, seed=5,
                                        extra_body={"top_k": 40})
    again = client.completions.create(model=MODEL, prompt="Exceptions", max_tokens=20, temperature=0.8, n=3, seed=5,
                                      extra_body={"top_k": 40})
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]  # seeded: reproducible
    solo = reference.generate(["Exceptions"], 20, SamplingParams(0.8, top_k=40), seeds=[6])[0].text  # sample 1: seed + 1
    assert sampled.choices[1].text == solo
    ids = list(b"Comparisons")
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=15, temperature=0)
    assert by_ids.choices[0].text == reference.generate([ids], 15)[0].text
    two = client.completions.create(model=MODEL, prompt=["x", "yield"], max_tokens=10, temperature=0)
    assert [c.text for c in two.choices] == [r.text for r in reference.generate(["x", "yield"], 10)]
    assert two.usage.prompt_tokens == 1 + 5


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    values = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(values["rfa_requests_total"]) >= 1 and float(values["rfa_generated_tokens_total"]) >= 25
    for name in ("rfa_queue_depth", "rfa_batch_occupancy", "rfa_tokens_per_second", "rfa_active_sequences"):
        assert name in values


def metric(server, name):
    text = httpx.get(server.url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_a_client_that_disconnects_frees_its_slot(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": MODEL, "prompt": "The import statement", "max_tokens": 500, "stream": True,
                            "temperature": 0}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.time() + 20
    while metric(server, "rfa_active_sequences") > 0 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(server, "rfa_active_sequences") == 0
    assert metric(server, "rfa_requests_cancelled") >= 1


BAD = [
    (b'{"model": "tiny", "prompt": "x",', 400, "not valid JSON"),
    (b'\xff\xfe{"model": "tiny"}', 400, "not UTF-8"),
    (b'[1, 2]', 400, "must be a JSON object"),
    (json.dumps({"model": "gpt-4", "prompt": "x"}).encode(), 404, "does not exist"),
    (json.dumps({"prompt": "x"}).encode(), 400, "model is required"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens must be an integer in [1, 512]"),
    (json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens must be an integer"),
    (json.dumps({"model": MODEL, "prompt": "x" * 2500}).encode(), 400, "more than this server's limit of 2000"),
    (json.dumps({"model": MODEL, "prompt": ""}).encode(), 400, "prompt 0 is empty"),
    (json.dumps({"model": MODEL, "prompt": [1, 999]}).encode(), 400, "token id 999 is out of range"),
    (json.dumps({"model": MODEL, "prompt": 5}).encode(), 400, "prompt must be a string"),
    (json.dumps({"model": MODEL, "prompt": "x", "temperature": -1}).encode(), 400, "temperature must be a number"),
    (json.dumps({"model": MODEL, "prompt": "x", "top_p": 0}).encode(), 400, "top_p must be a number in (0.0, 1.0]"),
    (json.dumps({"model": MODEL, "prompt": "x", "n": 0}).encode(), 400, "n must be an integer"),
    (json.dumps({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}).encode(), 400, "stop must be"),
    (json.dumps({"model": MODEL, "prompt": "x", "logprobs": 2}).encode(), 400, "logprobs is not supported"),
    (json.dumps({"model": MODEL, "prompt": "x", "logit_bias": {"5": 100}}).encode(), 400, "logit_bias is not supported"),
    (json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(), 400, "stream must be true or false"),
]


@pytest.mark.parametrize("body, status, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_an_openai_error(server, client, body, status, message):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    ok = client.completions.create(model=MODEL, prompt="x", max_tokens=3, temperature=0)
    assert len(ok.choices[0].text) >= 1  # still serving


def test_1000_requests_at_once(server, client):
    """A queue of 64 behind 64 slots: the overflow gets 429 with an OpenAI error body; every accepted request
    completes, and the server serves normally afterwards."""
    async def burst():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=1000)) as c:
            return await asyncio.gather(*(c.post(server.url + "/v1/completions", json={
                "model": MODEL, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 3, "temperature": 0})
                for i in range(1000)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and codes.count(429) >= 500 and codes.count(200) >= 64
    refused = next(r for r in responses if r.status_code == 429).json()["error"]
    assert refused["type"] == "rate_limit_error" and "busy" in refused["message"]
    assert all(len(r.json()["choices"][0]["text"]) >= 1 for r in responses if r.status_code == 200)
    ok = client.completions.create(model=MODEL, prompt="The import statement", max_tokens=5, temperature=0)
    assert ok.choices[0].finish_reason == "length"


def test_requests_admitted_together_are_prefilled_together(bundled_export, reference):
    """Requests that arrive in one scheduler round join in padded prefills grouped by prompt length; each gets
    the tokens it gets alone, and an invalid one fails alone."""
    engine = Engine(Decoder(OnnxRuntimeBackend(bundled_export)), max_batch=8, max_queue=16)
    prompts = ["x", "The import statement", "A" * 60, "Exceptions", [1, 999], "def f(x):\n    return"]
    greedy = SamplingParams()

    async def run():
        handles = [engine.submit(GenerationRequest(p, 12, greedy)) for p in prompts]
        handles[3].cancel()
        engine.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(h.done.wait() for h in handles)), 120)
        finally:
            engine.stop()
        return [h.outcome for h in handles]

    outcomes = asyncio.run(run())
    for i in (0, 1, 2, 5):
        want = reference.generate([prompts[i]], 12)[0]
        assert (outcomes[i].tokens, outcomes[i].finish_reason) == (want.tokens, "length")
        assert outcomes[i].prompt_tokens == len(reference.encode(prompts[i]))
    assert outcomes[3].finish_reason == "cancelled" and outcomes[3].tokens == []
    assert outcomes[4].finish_reason == "error" and "token id 999 is out of range" in outcomes[4].error
    assert engine.counters["failed"] == 1 and engine.counters["finished"] == 4


def test_stream_coalesces_what_piled_up():
    items = [(0, "a", None, None), (1, "x", None, None), (0, "b", None, None), (0, "c", "length", None),
             (0, "late", None, None), (1, "y", "stop_string", None)]
    assert _coalesce(items) == [(0, "abc", "length", None), (1, "xy", "stop_string", None), (0, "late", None, None)]


def test_stop_trimmer_holds_back_a_possible_stop():
    t = StopTrimmer(["END"])
    assert t.feed("abcE") == "ab"  # up to len("END") - 1 characters could begin a stop: held back
    assert t.feed("N") == "c"  # "EN" still could
    assert t.feed("Dtail") == "" and t.finish("stop_string") == ""  # "END": nothing from it on
    t = StopTrimmer(["END"])
    assert "".join(t.feed(p) for p in ["ab", "cE", "x"]) + t.finish("length") == "abcEx"
    t = StopTrimmer([])
    assert t.feed("anything") == "anything"


def test_the_serve_command_runs_without_torch(bundled_export, reference):
    """`rfa-export serve` on onnxruntime, as a user starts it, on the free port it picks and prints (--port 0):
    serves the same text, and never imports torch (nor onnx, onnxscript): python -X importtime."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "rfa_export", "serve", str(bundled_export),
                             "--port", "0", "--max-batch", "8", "--model-name", "tiny"],
                            stderr=subprocess.PIPE, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    head = []  # stderr up to the line that names the port the system picked (--port 0)
    try:
        for line in proc.stderr:
            head.append(line)
            served = re.match(r"rfa-export: serving 'tiny' \(onnxruntime cpu\) on http://127\.0\.0\.1:(\d+)/v1/completions$", line)
            if served:
                port = int(served.group(1))
                break
        else:
            raise AssertionError("the server exited before naming its port: " + "".join(head[-5:]))
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        resp = client.completions.create(model="tiny", prompt="Exceptions", max_tokens=12, temperature=0)
        assert resp.choices[0].text == reference.generate(["Exceptions"], 12)[0].text
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    err = "".join(head) + rest
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", err, re.M))
    assert "rfa_export.serving.engine" in imported and "fastapi" in imported
    assert not imported & {"torch", "onnx", "onnxscript"}, sorted(imported & {"torch", "onnx", "onnxscript"})


def test_a_port_in_use_is_one_line_before_the_model_loads(bundled_export, capsys, monkeypatch):
    """The listening socket is bound first: a taken port fails at once with one line, without loading the model."""
    import rfa_export.serving.app as app_module
    from rfa_export.cli import main

    def no_load(options):
        raise AssertionError("the model was loaded before the port was bound")

    monkeypatch.setattr(app_module, "app_from_options", no_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", str(bundled_export), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == f"rfa-export: error: cannot listen on 127.0.0.1:{port}: Address already in use"
