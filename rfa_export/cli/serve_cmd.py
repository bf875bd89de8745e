"""rfa-export serve OUT_DIR: an OpenAI-compatible HTTP server over continuous batching (docs/serving.md)."""

import argparse
import sys
from pathlib import Path

from .arg_types import positive_int

DESCRIPTION = """Serve a language model over HTTP with the OpenAI completions API: POST /v1/completions (text or token
ids, max_tokens, temperature, top_p, top_k, seed, stop, n, stream), GET /v1/models, GET /health, GET /metrics.
One scheduler thread runs every request in one continuously batched decode: a request joins at the next step
and leaves when it ends or its client goes away; up to --max-batch run at once, --max-queue more wait.

  rfa-export serve out/ --port 8000
  rfa-export serve --backend torch --checkpoint model.pt --device cuda --max-batch 64
  rfa-export serve out/ --ray --replicas 2        (Ray Serve: N replicas behind Ray's HTTP proxy)

  curl localhost:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "out", "prompt": "The import statement", "max_tokens": 40, "temperature": 0}'
"""


def add_parser(sub):
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI completions API)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="export directory (not needed for --backend torch)")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    p.add_argument("--checkpoint", metavar="MODEL.pt", help="the checkpoint, for --backend torch")
    p.add_argument("--tokenizer", metavar="tokenizer.json", help="--backend torch: the checkpoint's tokenizer.json")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients ask for (default: the export or checkpoint name)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="sequences decoded together (default 64)")
    p.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting for a slot before 429 (default 256)")
    p.add_argument("--max-tokens-limit", type=positive_int, default=4096, help="the largest max_tokens accepted (default 4096)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=65536, help="the longest prompt accepted (default 65536)")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--ray", action="store_true", help="serve through Ray Serve (pip install 'rfa-export[ray]')")
    p.add_argument("--replicas", type=positive_int, default=1, help="--ray: replicas, each with its own scheduler")
    p.set_defaults(run=run)
    return p


def server_options(args) -> dict:
    """Everything a replica needs to build its engine (plain data: Ray sends it to each replica)."""
    if args.backend != "torch" and args.out_dir is None:
        raise ValueError(f"--backend {args.backend} needs OUT_DIR (an export directory)")
    if args.backend == "torch" and args.checkpoint is None:
        raise ValueError("--backend torch needs --checkpoint MODEL.pt")
    if args.tokenizer is not None and args.backend != "torch":
        raise ValueError("--tokenizer is for --backend torch: an export carries its own tokenizer")
    source = args.checkpoint if args.backend == "torch" else args.out_dir
    name = args.model_name or Path(source).resolve().name.removesuffix(".pt")
    return {"backend": args.backend, "out_dir": args.out_dir, "checkpoint": args.checkpoint, "tokenizer": args.tokenizer,
            "device": args.device, "threads": args.threads, "model_name": name, "max_batch": args.max_batch,
            "max_queue": args.max_queue, "max_tokens": args.max_tokens_limit, "max_prompt_tokens": args.max_prompt_tokens}


def run(args) -> int:
    options = server_options(args)
    if args.ray:
        from ..serving.ray import serve_with_ray

        return serve_with_ray(options, args.replicas, args.host, args.port)
    try:
        import uvicorn
    except ImportError:
        raise RuntimeError("rfa-export serve needs FastAPI and uvicorn: pip install 'rfa-export[serve]'") from None
    from ..serving.app import app_from_options

    app = app_from_options(options)
    print(f"rfa-export: serving {options['model_name']!r} ({options['backend']} {options['device']}) on "
          f"http://{args.host}:{args.port}/v1/completions", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
