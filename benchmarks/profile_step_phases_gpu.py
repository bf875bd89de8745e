"""Where the fused attention step's µs go inside the kernel, block by block, in the model's B1 decode step.

    python benchmarks/profile_step_phases_gpu.py [--batch 1] [--reps 50] [--variant NAME] [--out DIR]

The model and step of bench_decode_gpu.py (RFA, default layer-by-layer path), with fp32 and bf16 states, with
the default settings or under each setting of one of bench_decode_variants_gpu.py's variants. The step kernel writes timestamps per block
(decode_attention.cuda.TIMELINE; decode_attention_step.h, "timeline"): cycles from its start to its state loads
issued, to the end of its wait for the q/k/v GEMM, to phi(q), phi(k) and the gate ready, to its state slab
arrived, to the state updated, and to its end. Each CUDA-graph replay overwrites them; per phase, the median and
the 90th percentile over replays, layers and blocks, in µs at the clock rate each block's global timer gives
over its whole run (the global timer ticks coarsely: the rate is a median over all blocks and replays). Writes
step_phases.json to --out.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import rfa_export.ops.decode_attention.cuda as decode_attention_cuda
import rfa_export.ops.native as native
from rfa_export.model import RFALanguageModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG, capture_graph, rfa_step  # noqa: E402
from bench_decode_variants_gpu import VARIANTS  # noqa: E402

# (name, first cycle stamp, last cycle stamp): indices into a block's timeline (decode_attention_step.h)
PHASES = [("issue state loads", 1, 2), ("wait for the GEMM", 2, 3), ("features and gate", 3, 4),
          ("wait for the state", 4, 5), ("update the state", 5, 6), ("readout and end", 6, 7), ("whole block", 1, 7)]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phases_us(samples):
    """samples: [replays, layers, blocks, fields] int64 timestamps -> {phase: (median µs, p90 µs)}, clock GHz."""
    s = samples.reshape(-1, samples.shape[-1]).double()
    ns = s[:, 8] - s[:, 0]
    ok = (ns > 0) & (s[:, 7] > s[:, 1])
    ghz = float(((s[ok, 7] - s[ok, 1]) / ns[ok]).median())  # cycles per ns over each block's run
    out = {}
    for name, a, b in PHASES:
        present = ok & (s[:, a] > 0) & (s[:, b] > 0)
        us = ((s[present, b] - s[present, a]) / ghz / 1e3).tolist()
        out[name] = (statistics.median(us), percentile(us, 0.9)) if us else (float("nan"), float("nan"))
    return out, ghz


@torch.no_grad()
def profile_setting(model, batch, state_dtype, reps):
    timeline = decode_attention_cuda.StepTimeline(CONFIG.n_layers, batch * CONFIG.n_heads, "cuda")
    decode_attention_cuda.TIMELINE = timeline
    try:
        graph = capture_graph(rfa_step(model, batch, state_dtype))
    finally:
        decode_attention_cuda.TIMELINE = None
    samples = []
    for _ in range(reps):
        timeline.stamps.zero_()
        graph.replay()
        torch.cuda.synchronize()
        samples.append(timeline.stamps[:, : batch * CONFIG.n_heads].cpu())
    return phases_us(torch.stack(samples))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--variant", choices=sorted(VARIANTS),
                    help="profile each setting of this bench_decode_variants_gpu.py variant (default: the defaults)")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    settings = VARIANTS[args.variant] if args.variant else {"default": []}
    patched = {(module, name) for changes in settings.values() for module, name, _ in changes}
    defaults = {key: getattr(*key) for key in patched}
    results = {}
    try:
        for label, changes in settings.items():
            for (module, name), value in defaults.items():
                setattr(module, name, value)
            for module, name, value in changes:
                setattr(module, name, value)
            for state_dtype in (torch.float32, torch.bfloat16):
                key = f"{label}, {str(state_dtype).split('.')[-1]} state"
                phases, ghz = profile_setting(model, args.batch, state_dtype, args.reps)
                results[key] = {"clock_ghz": ghz, "phases_us": phases}
                print(f"{key} ({ghz:.2f} GHz): " + "  ".join(f"{n} {m:.2f}/{p:.2f}" for n, (m, p) in phases.items()),
                      flush=True)
    finally:
        for (module, name), value in defaults.items():
            setattr(module, name, value)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_phases.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name(), "kernels_library": str(native.library_path()), "batch": args.batch,
         "reps": args.reps, "phases": [p[0] for p in PHASES], "results": results}, indent=2))


if __name__ == "__main__":
    main()
