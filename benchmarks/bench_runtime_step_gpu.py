"""Decoding speed through the runtime's PyTorch backend, as a user gets it (Decoder.step: host tokens in, host
logits out, greedy): eager steps against steps replayed from CUDA graphs (TorchBackend(cuda_graph=True)), side
by side in one process, for the bundled tiny model and the decode benchmark's model (bench_decode_gpu.CONFIG,
random weights in bf16). Baseline: the eager backend.

    python benchmarks/bench_runtime_step_gpu.py --out benchmarks/results/
    python benchmarks/bench_runtime_step_gpu.py --device cpu --models tiny --steps 10   # eager only: a smoke run
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rfa_export.model import RFALanguageModel
from rfa_export.runtime import Decoder, TorchBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def step_ms(decoder: Decoder, batch: int, steps: int, repeats: int) -> float:
    """Median over `repeats` of the mean ms of `steps` greedy Decoder.step calls after a 16-token prefill."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, decoder.backend.vocab_size, 16).tolist() for _ in range(batch)]
    state, logits = decoder.prefill(prompts)
    for _ in range(5):  # warm-up: captures, autotuning
        logits, state = decoder.step(logits.argmax(-1), state)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            logits, state = decoder.step(logits.argmax(-1), state)
        runs.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(runs)


def backends(name: str, device: str):
    """(mode, backend) pairs of one model: eager, and on CUDA replayed from graphs."""
    if name == "tiny":
        source, dtype = ROOT / "examples" / "tiny_rfa.pt", "fp32"
    else:
        torch.manual_seed(0)
        source, dtype = RFALanguageModel(CONFIG).eval(), "bf16"
    pairs = [("eager", TorchBackend(source, device=device, dtype=dtype))]
    if device == "cuda":
        pairs.append(("cuda_graph", TorchBackend(source, device=device, dtype=dtype, cuda_graph=True)))
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--models", default="tiny,decode_benchmark")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        if name not in ("tiny", "decode_benchmark"):
            ap.error(f"--models: unknown model {name!r} (tiny, decode_benchmark)")
        pairs = backends(name, args.device)
        for batch in (int(b) for b in args.batches.split(",")):
            times = {mode: step_ms(Decoder(backend), batch, args.steps, args.repeats) for mode, backend in pairs}
            for mode, ms in times.items():
                rows.append({"model": name, "batch": batch, "mode": mode, "ms_per_step": ms,
                             "tokens_per_s": batch / ms * 1e3, "x_eager": times["eager"] / ms})
                print(f"{name:16s} B={batch:3d} {mode:10s} {ms:8.3f} ms/step  {batch / ms * 1e3:9.0f} tok/s  "
                      f"x{times['eager'] / ms:.2f} against eager", flush=True)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"runtime_step_{args.device}.json"
    path.write_text(json.dumps({"device": gpu, "torch": torch.__version__, "command": sys.argv, "rows": rows}, indent=1))
    print(path)


if __name__ == "__main__":
    main()
