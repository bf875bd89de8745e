"""onnxruntime CPU vs PyTorch eager CPU on the bundled model, per lowering; export wall time.

    python benchmarks/bench_onnxruntime_cpu.py [--threads 2] [--big]

Baseline: PyTorch eager (fp32, same thread count) running the checkpoint through the same runtime
interface (rfa_export.runtime.TorchBackend). Prefill: B=1, T=512 tokens, tokens/s. Decode: B=1, one token
per call feeding the state back, tokens/s. --big also exports a ~110M-parameter random model.
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rfa_export.export import LOWERINGS, export_checkpoint, language_model_to_onnx, write_export
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.runtime import OnnxRuntimeBackend, TorchBackend

BUNDLED = Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt"


def median_seconds(fn, repeat, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def prefill_tokens_per_s(backend, T=512, repeat=10):
    ids = np.random.default_rng(0).integers(0, backend.vocab_size, size=(1, T))
    mask = np.ones((1, T), np.int64)
    pos = np.arange(T)[None] if backend.needs_positions else None
    state = backend.zeros_state(1)
    return T / median_seconds(lambda: backend.run(ids, mask, pos, state), repeat)


def decode_tokens_per_s(backend, steps=200):
    state = backend.zeros_state(1)
    token = np.array([[65]], np.int64)
    one = np.ones((1, 1), np.int64)

    def loop():
        s = state
        for i in range(steps):
            pos = np.array([[i]]) if backend.needs_positions else None
            _, s = backend.run(token, one, pos, s)

    return steps / median_seconds(loop, repeat=5, warmup=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--big", action="store_true", help="also time the export of a ~110M-parameter model")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
               "torch": torch.__version__, "rows": [], "export_seconds": {}}
    import onnxruntime

    results["onnxruntime"] = onnxruntime.__version__
    baseline = TorchBackend(BUNDLED)
    base = {"prefill": prefill_tokens_per_s(baseline), "decode": decode_tokens_per_s(baseline)}
    results["rows"].append({"backend": "PyTorch eager (baseline)", **base})
    with tempfile.TemporaryDirectory() as tmp:
        for lowering in LOWERINGS:
            start = time.perf_counter()
            export_checkpoint(BUNDLED, Path(tmp) / lowering, lowering=lowering)
            results["export_seconds"][f"bundled, --lowering {lowering}"] = time.perf_counter() - start
            backend = OnnxRuntimeBackend(Path(tmp) / lowering, threads=args.threads)
            results["rows"].append({"backend": f"onnxruntime CPU, --lowering {lowering}",
                                    "prefill": prefill_tokens_per_s(backend), "decode": decode_tokens_per_s(backend)})
        if args.big:
            cfg = RFAConfig(vocab_size=32000, d_model=768, n_heads=12, n_layers=12, d_ffn=3072, num_features=32)
            model = RFALanguageModel(cfg).eval()
            n = sum(p.numel() for p in model.parameters())
            start = time.perf_counter()
            proto, meta = language_model_to_onnx(model)
            write_export(proto, meta, Path(tmp) / "big")
            results["export_seconds"][f"random {n / 1e6:.0f}M parameters, --lowering plugin"] = time.perf_counter() - start

    print(f"# onnxruntime {results['onnxruntime']} vs torch {results['torch']} eager, {results['machine']}")
    print("| backend | prefill T=512 tokens/s | x baseline | decode tokens/s | x baseline |")
    print("|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['backend']} | {r['prefill']:,.0f} | {r['prefill'] / base['prefill']:.2f} | "
              f"{r['decode']:,.0f} | {r['decode'] / base['decode']:.2f} |")
    print("\n| export | wall time (s) |\n|---|---|")
    for k, v in results["export_seconds"].items():
        print(f"| {k} | {v:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
