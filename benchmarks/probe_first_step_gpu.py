"""Is the first B1 decode step measured in a process faster than later ones, and is it the clocks?

    python benchmarks/probe_first_step_gpu.py [--out DIR]

The RFA model and step of bench_decode_gpu.py at batch 1 (fp32 state): the step measured as bench_decode_gpu.py
does (a fresh state and CUDA graph per call, median of 50 replays) four times, then once at batch 64, three more
times at batch 1; then one graph kept and timed in six windows (per replay with a host sync between replays, and
50 replays back to back), with 1 GiB allocated after the third. The SM and memory clocks (nvidia-smi) are read
before each measurement. Prints one line per measurement and writes first_step.json to --out.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG, capture_graph, replay_ms, rfa_step, rfa_step_ms  # noqa: E402

from rfa_export.model import RFALanguageModel  # noqa: E402


def clocks() -> str:
    """'SM MHz, memory MHz' now, or '?' where nvidia-smi cannot say."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def kept_graph_windows(graph, windows=6, reps=50):
    """Per window: (median µs of single replays, each followed by a host sync; mean µs of back-to-back replays)."""
    for w in range(windows):
        if w == 3:
            yield "allocated", torch.empty(2**28, device="cuda")  # 1 GiB of other allocations from here on
        single = replay_ms(graph, reps)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            graph.replay()
        b.record()
        b.synchronize()
        yield f"kept graph window {w}", (single[reps // 2] * 1e3, a.elapsed_time(b) * 1e3 / reps)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    rows = []

    def record(label, value):
        rows.append({"t_s": round(time.time(), 3), "label": label, "us": value, "clocks": clocks()})
        print(f"{label:28s} {value}  [{rows[-1]['clocks']}]", flush=True)

    for i in range(4):
        record(f"B1 call {i}", round(rfa_step_ms(model, 1) * 1e3, 1))
    record("B64", round(rfa_step_ms(model, 64) * 1e3, 1))
    for i in range(3):
        record(f"B1 after B64, call {i}", round(rfa_step_ms(model, 1) * 1e3, 1))
    held = None
    for label, value in kept_graph_windows(capture_graph(rfa_step(model, 1))):
        if label == "allocated":
            held = value
            continue
        record(label, [round(v, 1) for v in value])
    del held
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "first_step.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
