"""rfa-export generate OUT_DIR --prompt TEXT: decode with any backend; only the text goes to stdout."""

import argparse
import sys
import time

from ..runtime.loading import BACKENDS
from .arg_types import (add_tensorrt_flags, check_model_source, cuda_graph_option, non_empty_text, positive_int,
                         tensorrt_options)

DESCRIPTION = """Generate text from a prompt with the exported model (onnxruntime, TensorRT) or its checkpoint
(PyTorch). Prints only the generated text on stdout, as it is generated; timings go to stderr.

  rfa-export generate out/ --prompt "The import statement" --max-new-tokens 200
  rfa-export generate out/ --prompt "..." --backend torch --checkpoint examples/tiny_rfa.pt
  rfa-export generate out/ --prompt "..." --backend tensorrt --plugin-library build/librfa_trt_plugin.so
"""


def add_parser(sub):
    p = sub.add_parser("generate", help="generate text with an export or a checkpoint", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="export directory (not needed for --backend torch)")
    p.add_argument("--prompt", required=True, help="prompt text (tokenized by the model's tokenizer)")
    p.add_argument("--max-new-tokens", type=positive_int, default=100)
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--checkpoint", metavar="MODEL.pt", help="the checkpoint, for --backend torch")
    p.add_argument("--tokenizer", metavar="tokenizer.json",
                   help="--backend torch: the checkpoint's tokenizer.json (an export carries its own)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where the model runs (default: cpu; TensorRT runs on cuda only)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", type=non_empty_text, default=[], metavar="TEXT", help="stop after this text (repeatable)")
    p.add_argument("--stop-token", action="append", type=int, default=[], metavar="ID", help="stop at this token id (repeatable)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="--device cuda, onnxruntime or torch: replay single-token steps from CUDA graphs (docs/runtime.md)")
    add_tensorrt_flags(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..runtime import ContinuousBatch, Decoder, SamplingParams, open_backend
    from ..runtime.backend import NonFiniteError

    check_model_source(args)
    options = tensorrt_options(args)
    if args.tokenizer is not None:
        options["tokenizer"] = args.tokenizer
    device = args.device or BACKENDS[args.backend].default_device
    options.update(cuda_graph_option(args.cuda_graph, args.backend, device))
    backend = open_backend(args.backend, args.out_dir, checkpoint=args.checkpoint, device=device, **options)
    decoder = Decoder(backend)
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    batch = ContinuousBatch(decoder)
    start = time.perf_counter()
    batch.add(args.prompt, args.max_new_tokens, sampling, args.stop_token, args.stop)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    produced = 0
    while batch.active:
        for event in batch.step():
            if event.finished == "error":
                sys.stdout.flush()
                raise NonFiniteError(event.error)
            produced += 1
            sys.stdout.write(event.text)
            sys.stdout.flush()
    decode_s = time.perf_counter() - start
    sys.stdout.write("\n")
    prompt_tokens = len(decoder.encode(args.prompt))
    result = batch.results[0]
    print(f"[{backend.name} {device}] prefill {prompt_tokens} tokens "
          f"in {prefill_s * 1e3:.1f} ms; {produced} new tokens in {decode_s:.2f} s "
          f"({produced / max(decode_s, 1e-9):.0f} tokens/s); finished: {result.finish_reason}", file=sys.stderr)
    return 0
