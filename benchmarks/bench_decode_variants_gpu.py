"""Same-process A/B of decode-step variants chosen by module settings, on the models of bench_decode_gpu.py.

    python benchmarks/bench_decode_variants_gpu.py --variant VARIANT [--out DIR] [--rounds 5]

early_read: what each decode linear program reads before its wait at one row (triton_linear.ONE_ROW_EARLY_READ):
"strip", its whole weight strip into registers (the default), or "tiles", its first two K tiles.
norm_in_linear: every residual add and LayerNorm before a strip-read linear layer at one row (before FFN1 and
before the q/k/v projection) inside that layer's kernel (triton_norm_linear.FUSE_NORM_AT_ONE_ROW), or as their
own kernels.
norm_in_qkv: the same for the RFA model's q/k/v projection alone (its FFN1 keeps the norm inside in both
settings; the softmax model is unchanged, a control).
trigger: when each one-row kernel lets the next one launch: every decode linear program holding its whole weight
strip before its wait (triton_linear.STRIP_TRIGGERS_BEFORE_WAIT) and the attention step of one block per
multiprocessor at its start (decode_attention.cuda.NEXT_KERNEL_AT_START), both the default; either alone; or
neither (the linear programs after their wait, the step after its state update).
embedding: the token lookup and its scaling as one Triton kernel that lets the first q/k/v projection launch at
its start (ops/embedding, the default), or as PyTorch's two kernels (both models).
ffn1_trigger: FFN1's strip programs let FFN2 launch after their wait (triton_linear.GELU_STRIP_TRIGGERS_AFTER_WAIT,
the default), or before it as every other strip layer does (both models).
RFA with fp32 and bf16 states and softmax at 1k context, all CUDA-graph replays, the settings alternating within
each round so every one sees the same GPU state; B64 (no variant applies above one row) runs in every round
as a control of the noise. Prints per-setting medians over rounds and writes <variant>.json to --out.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import rfa_export.model.attention as attention
import rfa_export.ops.decode_attention.cuda as decode_attention_cuda
import rfa_export.ops.decode_linear.triton_linear as triton_linear
import rfa_export.ops.decode_linear.triton_norm_linear as triton_norm_linear
import rfa_export.ops.embedding.op as embedding_op
import rfa_export.ops.native as native
from rfa_export.baselines import SoftmaxLanguageModel
from rfa_export.model import RFALanguageModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG, rfa_step_ms, softmax_step_ms  # noqa: E402


def _refused(*args, **kwargs):
    return None


# variant -> setting -> the (module, attribute, value)s that make it; the first setting is the default
VARIANTS = {
    "early_read": {"strip": [(triton_linear, "ONE_ROW_EARLY_READ", "strip")],
                   "tiles": [(triton_linear, "ONE_ROW_EARLY_READ", "tiles")]},
    "norm_in_linear": {"inside": [(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", True)],
                       "own_kernel": [(triton_norm_linear, "FUSE_NORM_AT_ONE_ROW", False)]},
    "norm_in_qkv": {"inside": [],
                    "own_kernel": [(attention, "linear_projecting_features_after_residual_norm", _refused),
                                   (attention, "linear_after_residual_norm", _refused)]},
    "trigger": {"both_early": [],
                "after_wait": [(triton_linear, "STRIP_TRIGGERS_BEFORE_WAIT", False),
                               (decode_attention_cuda, "NEXT_KERNEL_AT_START", False)],
                "linear_before_wait": [(decode_attention_cuda, "NEXT_KERNEL_AT_START", False)],
                "step_at_start": [(triton_linear, "STRIP_TRIGGERS_BEFORE_WAIT", False)]},
    "embedding": {"kernel": [], "torch": [(embedding_op, "scaled_embedding_kernel_supports", _refused)]},
    "ffn1_trigger": {"after_wait": [(triton_linear, "GELU_STRIP_TRIGGERS_AFTER_WAIT", True)],
                     "before_wait": [(triton_linear, "GELU_STRIP_TRIGGERS_AFTER_WAIT", False)]},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    settings = VARIANTS[args.variant]
    patched = {(module, name) for changes in settings.values() for module, name, _ in changes}
    defaults = {key: getattr(*key) for key in patched}
    torch.manual_seed(0)
    rfa = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    soft = SoftmaxLanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    cases = {"rfa_b1_us": lambda: rfa_step_ms(rfa, 1),
             "rfa_b1_bf16_state_us": lambda: rfa_step_ms(rfa, 1, False, torch.bfloat16),
             "softmax_b1_1k_us": lambda: softmax_step_ms(soft, 1, 1024),
             "rfa_b64_control_us": lambda: rfa_step_ms(rfa, 64)}
    samples = {label: {case: [] for case in cases} for label in settings}
    for fn in cases.values():  # discarded: the first B1 step measured in a process is faster (BENCHMARKS.md)
        fn()
    try:
        for r in range(args.rounds):
            for label, changes in settings.items():
                for (module, name), value in defaults.items():
                    setattr(module, name, value)
                for module, name, value in changes:
                    setattr(module, name, value)
                for case, fn in cases.items():
                    samples[label][case].append(fn() * 1e3)
            print(f"round {r}: " + "  ".join(f"{v} B1 {samples[v]['rfa_b1_us'][-1]:.1f}" for v in samples), flush=True)
    finally:
        for (module, name), value in defaults.items():
            setattr(module, name, value)
    medians = {v: {case: statistics.median(s) for case, s in by_case.items()} for v, by_case in samples.items()}
    print(f"{args.variant:22s} " + " ".join(f"{c:>22s}" for c in cases))
    for v in samples:
        print(f"{v:22s} " + " ".join(f"{medians[v][c]:22.1f}" for c in cases))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.variant}.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name(), "kernels_library": str(native.library_path()), "variant": args.variant,
         "rounds": args.rounds, "medians_us": medians, "samples_us": samples}, indent=2))


if __name__ == "__main__":
    main()
