"""rfa-export [export] MODEL.pt -o OUT_DIR: one stateful ONNX graph with rfa::CausalGatedScan."""

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from ..format.config import STATE_DTYPES
from ..format.lowerings import DEFAULT_LOWERING, LOWERINGS
from ..format.metadata import DTYPES

DESCRIPTION = """Export a checkpoint to OUT_DIR/model.onnx (+ rfa_export.json describing inputs, outputs and state).

One graph serves prefill and decode: inputs input_ids [batch, sequence], attention_mask
[batch, total_sequence_length] (and position_ids when the model uses positions), and per layer
past_key_values.{i}.recurrent_state; outputs logits and present.{i}.recurrent_state.

An encoder-decoder checkpoint (RFASeq2Seq) is detected and written as OUT_DIR/encoder_model.onnx (source
ids + mask -> encoder output and every decoder layer's cross state) and decoder_model.onnx (prefill and step:
self states in and out, cross states in); see docs/seq2seq.md.

--lowering (formerly --scan, still accepted) chooses how each layer's causal gated scan is lowered:
""" + "\n".join(textwrap.fill(low.help, 104, initial_indent=f"  {low.name:8s}", subsequent_indent=" " * 10)
             for low in LOWERINGS.values()) + "\n"


def add_parser(sub):
    p = sub.add_parser("export", help="export a checkpoint to ONNX (the default command)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="MODEL.pt", help="checkpoint written by rfa_export.model.checkpoint.save_checkpoint")
    p.add_argument("-o", "--output", dest="out_dir", metavar="OUT_DIR", required=True, help="output directory (created if needed)")
    p.add_argument("--lowering", "--scan", dest="lowering", choices=list(LOWERINGS), default=DEFAULT_LOWERING,
                   help=f"how the causal gated scan is lowered (default: {DEFAULT_LOWERING}; --scan is the old name)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="activation dtype (the state's is --state-dtype)")
    p.add_argument("--state-dtype", choices=list(STATE_DTYPES),
                   help="what the state is stored in between calls (default: the checkpoint's config.state_dtype); "
                        "bfloat16 halves the state's bytes, for gated models only (an encoder-decoder: its self states; cross "
                        "states stay float32): docs/op_contract.md, State dtype")
    p.add_argument("--genai", action="store_true",
                   help="also write genai_config.json and add the conv_state shim onnxruntime-genai 0.18 binds (docs/genai.md)")
    p.add_argument("--tokenizer", metavar="tokenizer.json",
                   help="a Hugging Face tokenizer.json for the model's vocabulary, stored with the export and used by "
                        "generate (default: byte-level for vocab-256 models, else token ids only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)
    return p


def preflight_output_dir(out_dir: Path) -> None:
    """Fail before any work if OUT_DIR cannot be created or written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OSError(f"output directory {out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".rfa-probe-", dir=out_dir)
        os.rmdir(probe)
    except OSError as e:
        raise OSError(f"cannot write to output directory {out_dir}: {e.strerror or e}") from None


def run(args) -> int:
    from ..model.checkpoint import checkpoint_kind
    from ..progress import Progress

    checkpoint, out_dir = Path(args.checkpoint), Path(args.out_dir)
    if checkpoint_kind(checkpoint) == "seq2seq":  # every checkpoint problem surfaces here, before any output
        return run_seq2seq(args, checkpoint, out_dir)
    from ..export.lm_export import language_model_to_onnx, write_export
    from ..model.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    if args.state_dtype is not None:
        model = model.with_state_dtype(args.state_dtype)
    if args.tokenizer is not None:
        from ..format.tokenizer_file import describe_tokenizer

        describe_tokenizer(args.tokenizer, model.config.vocab_size)  # a bad tokenizer too
    preflight_output_dir(out_dir)
    progress = Progress(enabled=not args.quiet)
    start = time.perf_counter()
    if not args.quiet:
        print(f"rfa-export: {checkpoint} -> {out_dir}/model.onnx", file=sys.stderr)
    proto, meta = language_model_to_onnx(model, args.lowering, args.dtype, progress, genai=args.genai)
    write_export(proto, meta, out_dir, progress, tokenizer=args.tokenizer)
    if not args.quiet:
        print(f"rfa-export: done in {time.perf_counter() - start:.1f} s: {len(meta.state)} state tensors, "
              f"lowering {meta.lowering}, {meta.dtype}", file=sys.stderr)
    print(out_dir / "model.onnx")
    return 0


def run_seq2seq(args, checkpoint: Path, out_dir: Path) -> int:
    """An encoder-decoder checkpoint: OUT_DIR/encoder_model.onnx + decoder_model.onnx (docs/seq2seq.md)."""
    from ..export.seq2seq_export import seq2seq_to_onnx, write_seq2seq_export
    from ..model.checkpoint import load_seq2seq_checkpoint
    from ..progress import Progress

    if args.genai:
        raise ValueError("--genai is for language models: onnxruntime-genai's encoder-decoder types need a KV cache")
    model = load_seq2seq_checkpoint(checkpoint)
    if args.state_dtype is not None:
        model = model.with_state_dtype(args.state_dtype)
    if args.tokenizer is not None:
        from ..format.tokenizer_file import describe_tokenizer

        describe_tokenizer(args.tokenizer, min(model.config.src_vocab_size, model.config.tgt_vocab_size))
    preflight_output_dir(out_dir)
    progress = Progress(enabled=not args.quiet)
    start = time.perf_counter()
    if not args.quiet:
        print(f"rfa-export: {checkpoint} (encoder-decoder) -> {out_dir}/encoder_model.onnx, decoder_model.onnx",
              file=sys.stderr)
    protos, meta = seq2seq_to_onnx(model, args.lowering, args.dtype, progress)
    write_seq2seq_export(protos, meta, out_dir, progress, tokenizer=args.tokenizer)
    if not args.quiet:
        print(f"rfa-export: done in {time.perf_counter() - start:.1f} s: {len(meta.state)} self states, "
              f"{len(meta.cross_state)} cross states, lowering {meta.lowering}, {meta.dtype}", file=sys.stderr)
    print(out_dir / "decoder_model.onnx")
    return 0
