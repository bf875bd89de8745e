"""rfa-export serve OUT_DIR: an OpenAI-compatible HTTP server over continuous batching (docs/serving.md)."""

import argparse
import socket
import sys
from pathlib import Path

from ..runtime.loading import BACKENDS
from .arg_types import add_tensorrt_flags, check_model_source, cuda_graph_option, port, positive_int, tensorrt_options

DESCRIPTION = """Serve a language model over HTTP with the OpenAI completions API: POST /v1/completions (text or token
ids, max_tokens, temperature, top_p, top_k, seed, stop, n, stream), GET /v1/models, GET /health, GET /metrics.
One scheduler thread runs every request in one continuously batched decode: a request joins at the next step
and leaves when it ends or its client goes away; up to --max-batch run at once, --max-queue more wait.

  rfa-export serve out/ --port 8000
  rfa-export serve --backend torch --checkpoint model.pt --device cuda --max-batch 64
  rfa-export serve out/ --backend tensorrt --plugin-library build/librfa_trt_plugin.so
  rfa-export serve out/ --ray --replicas 2        (Ray Serve: N replicas behind Ray's HTTP proxy)

  curl localhost:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "out", "prompt": "The import statement", "max_tokens": 40, "temperature": 0}'
"""


def add_parser(sub):
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI completions API)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="export directory (not needed for --backend torch)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--checkpoint", metavar="MODEL.pt", help="the checkpoint, for --backend torch")
    p.add_argument("--tokenizer", metavar="tokenizer.json", help="--backend torch: the checkpoint's tokenizer.json")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where the model runs (default: cpu; TensorRT runs on cuda only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000; 0: any free one, printed)")
    p.add_argument("--model-name", help="the model id clients ask for (default: the export or checkpoint name)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="sequences decoded together (default 64)")
    p.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting for a slot before 429 (default 256)")
    p.add_argument("--max-tokens-limit", type=positive_int, default=4096, help="the largest max_tokens accepted (default 4096)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=65536, help="the longest prompt accepted (default 65536)")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--cuda-graph", action="store_true",
                   help="--device cuda: replay single-token steps from CUDA graphs (docs/runtime.md)")
    add_tensorrt_flags(p)
    p.add_argument("--ray", action="store_true", help="serve through Ray Serve (pip install 'rfa-export[ray]')")
    p.add_argument("--replicas", type=positive_int, default=1, help="--ray: replicas, each with its own scheduler")
    p.set_defaults(run=run)
    return p


def server_options(args) -> dict:
    """Everything a replica needs to build its engine (plain data: Ray sends it to each replica)."""
    check_model_source(args)
    if args.backend == "torch" and args.checkpoint is None:
        raise ValueError("--backend torch needs --checkpoint MODEL.pt")
    if args.threads is not None and args.backend != "onnxruntime":
        raise ValueError("--threads is for --backend onnxruntime")
    device = args.device or BACKENDS[args.backend].default_device
    extra = {**tensorrt_options(args), **cuda_graph_option(args.cuda_graph, args.backend, device)}
    source = args.checkpoint if args.backend == "torch" else args.out_dir
    name = args.model_name or Path(source).resolve().name.removesuffix(".pt")
    return {"backend": args.backend, "out_dir": args.out_dir, "checkpoint": args.checkpoint, "tokenizer": args.tokenizer,
            "device": device, "threads": args.threads, "backend_options": extra, "model_name": name, "max_batch": args.max_batch,
            "max_queue": args.max_queue, "max_tokens": args.max_tokens_limit, "max_prompt_tokens": args.max_prompt_tokens}


def listening_socket(host: str, port_number: int) -> socket.socket:
    """The server's socket, bound before the model loads, so that a port in use or a bad host is a one-line
    error at once instead of a log line from uvicorn after the load."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port_number, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host}:{port_number}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections made while the model loads wait in the backlog instead of being refused
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port_number}: {e.strerror or e}") from None
    return sock


def run(args) -> int:
    options = server_options(args)
    if args.ray:
        if args.port == 0:
            raise ValueError("--ray needs a fixed --port (Ray's HTTP proxy does not report a free one it picked)")
        from ..serving.ray import serve_with_ray

        return serve_with_ray(options, args.replicas, args.host, args.port)
    try:
        import uvicorn
    except ImportError:
        raise RuntimeError("rfa-export serve needs FastAPI and uvicorn: pip install 'rfa-export[serve]'") from None
    from ..serving.app import app_from_options

    sock = listening_socket(args.host, args.port)
    with sock:
        app = app_from_options(options)
        bound_port = sock.getsockname()[1]
        print(f"rfa-export: serving {options['model_name']!r} ({options['backend']} {options['device']}) on "
              f"http://{args.host}:{bound_port}/v1/completions", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0
