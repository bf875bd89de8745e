"""A/B of what each decode linear program reads before its wait at batch 1 (triton_linear.ONE_ROW_EARLY_READ).

    python benchmarks/bench_one_row_early_read_gpu.py [--out DIR] [--rounds 5]

"strip": the program's whole weight strip into registers (the default); "tiles": its first two K tiles
(the default before it). The models and steps of
bench_decode_gpu.py (RFA with fp32 and bf16 states, softmax at 1k context, all CUDA-graph replays), in
alternating rounds in one process so every mode sees the same GPU state; B64 (no early reads at 64 rows)
runs in every round as a control of the noise. Prints per-mode medians over rounds and writes
early_read.json to --out.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import rfa_export.ops.decode_linear.triton_linear as triton_linear
from rfa_export.baselines import SoftmaxLanguageModel
from rfa_export.model import RFALanguageModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG, rfa_step_ms, softmax_step_ms  # noqa: E402

MODES = ("strip", "tiles")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    rfa = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    soft = SoftmaxLanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    cases = {"rfa_b1_us": lambda: rfa_step_ms(rfa, 1),
             "rfa_b1_bf16_state_us": lambda: rfa_step_ms(rfa, 1, False, torch.bfloat16),
             "softmax_b1_1k_us": lambda: softmax_step_ms(soft, 1, 1024),
             "rfa_b64_control_us": lambda: rfa_step_ms(rfa, 64)}
    samples = {mode: {case: [] for case in cases} for mode in MODES}
    for r in range(args.rounds):
        for mode in MODES:
            triton_linear.ONE_ROW_EARLY_READ = mode
            for case, fn in cases.items():
                samples[mode][case].append(fn() * 1e3)
        print(f"round {r}: " + "  ".join(f"{m} B1 {samples[m]['rfa_b1_us'][-1]:.1f}" for m in MODES), flush=True)
    medians = {mode: {case: statistics.median(v) for case, v in by_case.items()} for mode, by_case in samples.items()}
    print(f"{'mode':6s} " + " ".join(f"{c:>22s}" for c in cases))
    for mode in MODES:
        print(f"{mode:6s} " + " ".join(f"{medians[mode][c]:22.1f}" for c in cases))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_read.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name(), "rounds": args.rounds, "medians_us": medians, "samples_us": samples},
        indent=2))


if __name__ == "__main__":
    main()
