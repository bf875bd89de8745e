"""rfa-export doctor: what this install has, and why anything is missing."""

import json


def add_parser(sub):
    p = sub.add_parser("doctor", help="show what this install has (kernels, providers, TensorRT, ...)",
                       description="Show what this install of rfa-export has: the CUDA kernels (path, CUDA "
                                   "version, architectures), torch, onnxruntime and its providers, TensorRT and "
                                   "the plugin library, onnxruntime-genai, tokenizers; and for anything missing, "
                                   "why and how to get it. Exit code 0 whatever is missing.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..tools.doctor import diagnose, format_findings

    findings = diagnose()
    print(json.dumps([vars(f) for f in findings], indent=2) if args.json else format_findings(findings))
    return 0
