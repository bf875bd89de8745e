"""rfa-export triton OUT_DIR -o REPO: a Triton Inference Server model repository with implicit state."""

import argparse

from .arg_types import positive_int

DESCRIPTION = """Write a Triton Inference Server model repository for a language-model export: REPO/<name>/1/model.onnx
(the export's graph with Triton's START, READY and CORRID sequence controls wired in: START makes the graph read
zeros instead of the state it is given) and REPO/<name>/config.pbtxt (onnxruntime backend, the sequence batcher
with one implicit `state` per layer, fp32, zero initial state, max_sequence_idle_microseconds). docs/serving.md
says how to launch tritonserver on it.

  rfa-export triton out/ -o models/ [--name rfa] [--max-batch 64] [--cpu]
  rfa-export triton out_plugin/ -o models/ --plugin-library /opt/rfa/librfa_trt_plugin_autoreg.so   (TensorRT accelerator)
"""


def add_parser(sub):
    p = sub.add_parser("triton", help="write a Triton model repository (implicit state)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="a language-model export directory")
    p.add_argument("-o", "--output", dest="repo", metavar="REPO", required=True, help="the model repository")
    p.add_argument("--name", help="the model's name in the repository: letters, digits, _ . - (default: the "
                   "export folder's name, other characters as _)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="max_batch_size (default 64)")
    p.add_argument("--idle-us", type=positive_int, default=60_000_000,
                   help="max_sequence_idle_microseconds: a sequence idle this long is dropped (default 60 s)")
    p.add_argument("--cpu", action="store_true", help="instance_group KIND_CPU (default KIND_GPU)")
    p.add_argument("--plugin-library", help="path on the server of librfa_trt_plugin_autoreg.so (the self-registering build: onnxruntime's TensorRT "
                        "provider only loads it): run with TensorRT as onnxruntime's accelerator")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..serving.triton import write_repository

    path = write_repository(args.out_dir, args.repo, args.name, args.max_batch, args.idle_us, not args.cpu,
                            args.plugin_library)
    print(path)
    return 0
