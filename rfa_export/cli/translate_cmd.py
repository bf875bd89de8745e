"""rfa-export translate OUT_DIR --source TEXT: decode an encoder-decoder export (or checkpoint) for each source."""

import argparse
import sys
import time

from ..runtime.seq2seq.loading import SEQ2SEQ_BACKENDS
from .arg_types import check_model_source, finite_float, positive_int

DESCRIPTION = """Translate with an encoder-decoder export (onnxruntime) or its checkpoint (PyTorch): one line of
output per --source, in order; timings go to stderr. Greedy by default; --beams N for beam search (the self
states are reordered with the beams, the cross states stay one per source); --temperature for sampling.

  rfa-export translate out/ --source "421,305"
  rfa-export translate out/ --source "12" --source "7,000,001" --beams 4
  rfa-export translate --backend torch --checkpoint examples/number_words_rfa.pt --source "99"
"""


def add_parser(sub):
    p = sub.add_parser("translate", help="decode an encoder-decoder export or checkpoint", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="export directory (not needed for --backend torch)")
    p.add_argument("--source", action="append", required=True, metavar="TEXT", help="source text (repeatable)")
    p.add_argument("--beams", type=positive_int, default=1, help="beam search with this many beams (default 1: greedy)")
    p.add_argument("--length-penalty", type=finite_float, default=1.0, help="beam scores are divided by length ** this")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--backend", choices=list(SEQ2SEQ_BACKENDS), default="onnxruntime")
    p.add_argument("--checkpoint", metavar="MODEL.pt", help="the checkpoint, for --backend torch")
    p.add_argument("--tokenizer", metavar="tokenizer.json", help="--backend torch: the checkpoint's tokenizer.json")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); not with --beams")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..runtime import SamplingParams
    from ..runtime.seq2seq import Seq2SeqDecoder, open_seq2seq_backend

    check_model_source(args)
    options = {} if args.tokenizer is None else {"tokenizer": args.tokenizer}
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    if args.beams > 1 and not sampling.greedy:
        raise ValueError("--beams and --temperature > 0 do not go together (beam search is deterministic)")
    decoder = Seq2SeqDecoder(open_seq2seq_backend(args.backend, args.out_dir, args.checkpoint, args.device, **options))
    start = time.perf_counter()
    if args.beams > 1:
        best = [hyps[0][0] for hyps in decoder.beam_search(args.source, args.beams, args.max_new_tokens, args.length_penalty)]
        texts = [decoder.decode_text(tokens) for tokens in best]
        produced = sum(map(len, best))
    else:
        results = decoder.generate(args.source, args.max_new_tokens, sampling)
        texts = [r.text for r in results]
        produced = sum(len(r.tokens) for r in results)
    elapsed = time.perf_counter() - start
    for text in texts:
        print(text)
    print(f"[{decoder.backend.name} {args.device}] {len(texts)} source(s), {produced} tokens in {elapsed:.2f} s"
          + (f", {args.beams} beams" if args.beams > 1 else ""), file=sys.stderr)
    return 0
