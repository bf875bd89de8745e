"""Scale-out on Ray Serve: the same app as a deployment of two replicas (each its own scheduler) on a local Ray
cluster behind Ray's HTTP proxy: requests spread over both, results equal the single-process server's."""

import socket
import threading

import pytest

ray = pytest.importorskip("ray", reason="Ray not installed")
serve = pytest.importorskip("ray.serve", reason="Ray Serve not installed")
openai = pytest.importorskip("openai", reason="openai not installed")

from rfa_export.runtime import Decoder, OnnxRuntimeBackend  # noqa: E402
from rfa_export.serving.ray import deployment  # noqa: E402

PROMPTS = ["The import statement", "A class definition", "Exceptions", "Comparisons", "yield", "Lambda expressions"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(bundled_export):
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = {"backend": "onnxruntime", "out_dir": str(bundled_export), "checkpoint": None, "tokenizer": None,
               "device": "cpu", "threads": 1, "model_name": "tiny", "max_batch": 16, "max_queue": 64,
               "max_tokens": 512, "max_prompt_tokens": 4096}
    serve.run(deployment(options, replicas=2), name="rfa-export", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_share_the_load_and_agree(ray_server, bundled_export):
    client = openai.OpenAI(base_url=ray_server + "/v1", api_key="unused", max_retries=0, timeout=120)
    want = {p: r.text for p, r in zip(PROMPTS, Decoder(OnnxRuntimeBackend(bundled_export)).generate(PROMPTS, 20))}
    seen, lock = [], threading.Lock()

    def run(i):
        prompt = PROMPTS[i % len(PROMPTS)]
        resp = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
        with lock:
            seen.append((resp.system_fingerprint, prompt, resp.choices[0].text))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(seen) == 48
    replicas = {fingerprint for fingerprint, _, _ in seen}
    assert len(replicas) == 2 and all(f.startswith("rfa-export-replica-") for f in replicas)
    assert all(text == want[prompt] for _, prompt, text in seen)


def test_cuda_replicas_ask_ray_for_a_gpu_each():
    """A replica that asks for no GPU gets CUDA_VISIBLE_DEVICES="" from Ray and could not use one."""
    cuda = deployment({"device": "cuda"}, replicas=3)._bound_deployment
    cpu = deployment({"device": "cpu"}, replicas=3)._bound_deployment
    assert cuda.num_replicas == 3 and cuda.ray_actor_options.get("num_gpus") == 1
    assert not cpu.ray_actor_options.get("num_gpus")
