"""rfa-export verify OUT_DIR --checkpoint MODEL.pt: onnxruntime vs PyTorch on the same inputs."""

import argparse
import json
import sys

from .arg_types import non_negative_int, positive_float, positive_int

DESCRIPTION = """Run OUT_DIR/model.onnx in onnxruntime (CPU) and MODEL.pt in PyTorch (float64) on the same
inputs — random tokens at each --lengths and a batch of real English text — as a prefill followed by
--decode-steps single-token steps that feed each backend's state back. Prints max abs / rel error per
output and state tensor and passes or fails against the documented tolerance (fp32 1e-4, fp16 1e-2,
bf16 2e-2, relative to max |reference|; the dtype is the model's own). Exit code 0 = pass, 1 = fail or error.

An encoder-decoder export (encoder_model.onnx, decoder_model.onnx) is compared on one ragged batch of random
sources, one per --lengths, and for byte-level models on numbers: the encoder's cross states, then the
decoder's prefill (BOS) and --decode-steps steps.

--save-polygraphy DIR also writes DIR/inputs.json and DIR/torch_outputs.json (the first prefill case) so
polygraphy can make the same comparison:
  polygraphy run OUT_DIR/model.onnx --onnxrt --load-inputs DIR/inputs.json --load-outputs DIR/torch_outputs.json --rtol 1e-4 --atol 1e-4
"""


def _lengths(text: str):
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("lengths must be >= 1")
    return values


def add_parser(sub):
    p = sub.add_parser("verify", help="compare an export with its checkpoint", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--checkpoint", required=True, metavar="MODEL.pt")
    p.add_argument("--lengths", type=_lengths, default=[1, 7, 64], help="prefill lengths (default 1,7,64)")
    p.add_argument("--decode-steps", type=non_negative_int, default=20, help="decode steps after each prefill (default 20)")
    p.add_argument("--batch", type=positive_int, default=2, help="rows of the random-token cases (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=positive_float, default=None, help="override the documented relative tolerance")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--save-polygraphy", metavar="DIR", help="write polygraphy inputs/reference outputs to DIR")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..format.export_dir import export_kind
    from ..tools.verify import format_report, save_polygraphy_reference, verify_export

    if export_kind(args.out_dir) == "seq2seq":
        from ..tools.verify_seq2seq import verify_seq2seq_export

        if args.save_polygraphy:
            raise ValueError("--save-polygraphy is for language-model exports")
        report = verify_seq2seq_export(args.out_dir, args.checkpoint, lengths=args.lengths,
                                       decode_steps=args.decode_steps, seed=args.seed, tolerance=args.tolerance)
    else:
        report = verify_export(args.out_dir, args.checkpoint, lengths=args.lengths, decode_steps=args.decode_steps,
                               batch=args.batch, seed=args.seed, tolerance=args.tolerance)
    if args.json:
        print(json.dumps({"passed": report.passed, "tolerance": report.tolerance, "worst": report.worst,
                          "rows": [vars(r) for r in report.rows]}, indent=2))
    else:
        print(format_report(report))
    if args.save_polygraphy:
        paths = save_polygraphy_reference(args.out_dir, args.checkpoint, args.save_polygraphy, args.lengths[0], args.batch, args.seed)
        print("polygraphy files: " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0 if report.passed else 1
