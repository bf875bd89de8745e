"""Decode on the GPU: the RFA model vs a softmax transformer of the same width and depth with a KV cache.

    python benchmarks/bench_decode_gpu.py [--out DIR] [--contexts 1024,...] [--batches 1,64]

Both models: d_model 1024, 16 heads (head dim 64), 8 layers, FFN 4096, vocab 32000, bf16 weights and
activations. RFA: gated, F = 128 random features, fp32 state, one step = RFALanguageModel.step with greedy
decoding, the model's default path: one or more kernels per layer (at batch 1 the opt-in step in one
persistent kernel, ops/lm_decode_step, is measured beside it); beside it the same model with a bf16 state
and with an int8-row state (state_dtype bfloat16 / int8). Softmax (baseline): the same blocks with softmax
attention, a static bf16 KV cache filled to the context length, SDPA over it. Both run their residual adds
and layer norms through the same fused kernel (rfa_export/model/residual_norm.py; at one row each inside the
next linear layer's kernel: FFN1's, residual_feed_forward, and the q/k/v projection's) and their linear layers
through the same decode-sized Triton kernel (rfa_export/model/linear_layers.py), launched as programmatic
dependent launches on Hopper, so the shared layers cost the same (SDPA in the softmax step is a plain
launch). Each step is captured once as a CUDA graph and replayed, so both are measured without launch
overhead. Per context length and batch: median step latency (CUDA events over 50 replays), tokens/s =
batch / latency, and peak GPU memory (weights + state or cache).
Writes decode.json and decode.png (latency and memory against context) to --out.
"""

import argparse
import json
import math
import os
from pathlib import Path

import torch

from rfa_export.baselines import SoftmaxLanguageModel
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.model.linear_layers import linear
from rfa_export.model.residual_norm import residual_feed_forward, residual_linear, residual_linear_argmax
from rfa_export.ops.embedding import scaled_embedding

CONFIG = RFAConfig(vocab_size=32000, d_model=1024, n_heads=16, n_layers=8, d_ffn=4096, num_features=64,
                   gated=True, positional="none")


def capture_graph(step, warmup=3):
    """step() captured as a CUDA graph (after warm-up runs on a side stream) and replayed warmup times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    return graph


def replay_ms(graph, reps=50):
    """ms of each of `reps` replays of a captured graph (CUDA events, a host sync after each), sorted."""
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)


def time_graph(step, warmup=3, reps=50):
    times = replay_ms(capture_graph(step, warmup), reps)
    return times[len(times) // 2]


def rfa_step(model, batch, state_dtype=torch.float32):
    """A closure running model.step once with greedy decoding on random states of `state_dtype`."""
    from rfa_export.ops.causal_gated_scan.state_storage import narrow_state

    states = [narrow_state(torch.rand(batch, *CONFIG.state_shape, device="cuda") * 0.01, state_dtype)
              for _ in range(CONFIG.n_layers)]
    token = torch.randint(0, CONFIG.vocab_size, (batch,), device="cuda")
    pos = torch.zeros(batch, dtype=torch.long, device="cuda")

    def step():  # the kernels update the state in place, the argmax lands in token
        model.step(token, states, pos, inplace_state=True, next_token=token)

    return step


@torch.no_grad()
def rfa_step_ms(model, batch, one_kernel=False, state_dtype=torch.float32):
    """model.step with greedy decoding, the model's default path (one or more kernels per layer);
    one_kernel: at batch 1 the opt-in step in one kernel (RFA_LM_STEP_KERNEL=1, ops/lm_decode_step).
    state_dtype bfloat16 / int8: the state stored as bf16 / int8 rows (config state_dtype; the one-kernel B1 step
    takes fp32 only)."""
    step = rfa_step(model, batch, state_dtype)
    previous = os.environ.pop("RFA_LM_STEP_KERNEL", None)
    if one_kernel:  # read when the step is captured
        os.environ["RFA_LM_STEP_KERNEL"] = "1"
    try:
        return time_graph(step)
    finally:
        os.environ.pop("RFA_LM_STEP_KERNEL", None)
        if previous is not None:
            os.environ["RFA_LM_STEP_KERNEL"] = previous


class StaticCacheStep(torch.nn.Module):
    """One softmax decode step at a fixed context length: write k, v at position L, attend over 0..L."""

    def __init__(self, model: SoftmaxLanguageModel, batch: int, context: int):
        super().__init__()
        self.m, self.L = model, context
        cfg = model.config
        shape = (batch, cfg.n_heads, context + 1, cfg.head_dim)
        self.k = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in model.blocks]
        self.v = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in model.blocks]
        self.pe = torch.zeros(1, 1, cfg.d_model, device="cuda", dtype=torch.bfloat16)

    def forward(self, token):
        """The logits; their argmax (greedy decoding's next token) written into `token`, as the RFA step does."""
        B = token.shape[0]
        d = self.m.config.d_model
        x = scaled_embedding(token[:, None], self.m.embed.weight, math.sqrt(d)) + self.pe
        # the residual adds and layer norms as in the model's forward (each with the next linear layer at one row, or
        # one fused kernel per pair, as for RFA)
        f = None
        for block, kc, vc in zip(self.m.blocks, self.k, self.v):
            x, qkv = residual_linear(x, f, block.ln_attn, block.qkv.weight, block.qkv.bias)
            q, k, v = qkv.view(B, 1, 3, block.h, d // block.h).permute(2, 0, 3, 1, 4)
            kc[:, :, self.L : self.L + 1].copy_(k)
            vc[:, :, self.L : self.L + 1].copy_(v)
            y = torch.nn.functional.scaled_dot_product_attention(q, kc, vc)
            y = linear(y.transpose(1, 2).reshape(B, 1, d), block.o_proj.weight, block.o_proj.bias, partial_sums=True)
            x, f = residual_feed_forward(x, y, block.ln_ffn, block.ffn)
        _, logits = residual_linear_argmax(x, f, self.m.ln_f, self.m.lm_head.weight, self.m.lm_head.bias, token)
        return logits[:, 0]


def softmax_step(model, batch, context):
    """A closure running one softmax decode step with greedy decoding over a cache filled to `context`."""
    step_module = StaticCacheStep(model, batch, context)
    token = torch.randint(0, CONFIG.vocab_size, (batch,), device="cuda")

    def step():
        step_module(token)

    return step


@torch.no_grad()
def softmax_step_ms(model, batch, context):
    return time_graph(softmax_step(model, batch, context))


STAGES = ["A: LayerNorm + q/k/v/gate", "B: features + scan step", "C: readout + output projection",
          "D: LayerNorm + FFN1 + GELU", "E: FFN2"]


@torch.no_grad()
def timeline_b1(model, steps=20):
    """Where block 0 of the one-kernel B1 step spends its time (ops/lm_decode_step, lm_decode_step.h), µs
    averaged over `steps` eager steps: per stage (averaged over layers) its own work and its wait at the
    grid barrier after it, then the LM head; clock64 converted to time by the global timer's span."""
    from rfa_export.ops.lm_decode_step import cuda_lm_decode_step_

    L = CONFIG.n_layers
    states = [torch.rand(1, *CONFIG.state_shape, device="cuda") * 0.01 for _ in range(L)]
    token = torch.randint(0, CONFIG.vocab_size, (1,), device="cuda")
    pos = torch.zeros(1, dtype=torch.long, device="cuda")
    stamps = torch.zeros(4 + 10 * L, dtype=torch.int64, device="cuda")
    weights = model.step_weights()
    work = torch.zeros(5)
    wait = torch.zeros(5)
    head = total = 0.0
    for i in range(steps + 3):
        cuda_lm_decode_step_(weights, token, pos, states, token, stamps)
        t = stamps.cpu().double()
        if i < 3:
            continue
        ns_per_clock = (t[1] - t[0]) / (t[3 + 10 * L] - t[2])
        leave = t[2]
        for k in range(5 * L):
            arrive, left = t[3 + 2 * k], t[4 + 2 * k]
            work[k % 5] += float((arrive - leave) * ns_per_clock) / 1e3 / (L * steps)
            wait[k % 5] += float((left - arrive) * ns_per_clock) / 1e3 / (L * steps)
            leave = left
        head += float((t[3 + 10 * L] - leave) * ns_per_clock) / 1e3 / steps
        total += float(t[1] - t[0]) / 1e3 / steps
    rows = [{"stage": name, "work_us": float(work[i]), "barrier_us": float(wait[i])} for i, name in enumerate(STAGES)]
    return {"per_layer": rows, "lm_head_us": head, "kernel_us": total}


def measure(fn, *args):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ms = fn(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.empty_cache()
    return ms, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--timeline", action="store_true", help="also record where the B1 one-kernel step spends its time")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    rfa = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    soft = SoftmaxLanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    rows = []
    for batch in batches:
        rfa_ms, rfa_gb = measure(rfa_step_ms, rfa, batch)  # the state does not grow with the context
        one_kernel_ms = measure(rfa_step_ms, rfa, batch, True)[0] if batch == 1 else None
        bf16_ms, bf16_gb = measure(rfa_step_ms, rfa, batch, False, torch.bfloat16)
        int8_ms, int8_gb = measure(rfa_step_ms, rfa, batch, False, torch.int8)
        if batch == 1:
            print(f"B=1 RFA step {rfa_ms * 1e3:.1f} µs (default path), one-kernel step {one_kernel_ms * 1e3:.1f} µs",
                  flush=True)
        for context in contexts:
            soft_ms, soft_gb = measure(softmax_step_ms, soft, batch, context)
            rows.append({"batch": batch, "context": context, "rfa_ms": rfa_ms, "rfa_one_kernel_ms": one_kernel_ms,
                         "rfa_peak_gib": rfa_gb, "rfa_bf16_state_ms": bf16_ms, "rfa_bf16_state_peak_gib": bf16_gb,
                         "rfa_int8_state_ms": int8_ms, "rfa_int8_state_peak_gib": int8_gb,
                         "softmax_ms": soft_ms, "softmax_peak_gib": soft_gb, "speedup": soft_ms / rfa_ms})
            r = rows[-1]
            print(f"B={batch:3d} context={context:6d}  RFA {r['rfa_ms'] * 1e3:8.1f} µs ({batch / r['rfa_ms'] * 1e3:9.0f} tok/s, "
                  f"{rfa_gb:5.2f} GiB)  softmax {soft_ms * 1e3:8.1f} µs ({batch / soft_ms * 1e3:9.0f} tok/s, {soft_gb:6.2f} GiB)  "
                  f"x{r['speedup']:.2f}  (RFA with a bf16 state {bf16_ms * 1e3:.1f} µs, x{soft_ms / bf16_ms:.2f}; "
                  f"int8-row state {int8_ms * 1e3:.1f} µs, x{soft_ms / int8_ms:.2f})", flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "config": CONFIG.to_dict(), "rows": rows}
    if args.timeline:
        result["b1_timeline"] = timeline_b1(rfa)
        tl = result["b1_timeline"]
        print(f"B1 one-kernel step, block 0 (kernel {tl['kernel_us']:.1f} µs; per layer, µs of work / waiting at the barrier after it):")
        for r in tl["per_layer"]:
            print(f"  {r['stage']:34s} {r['work_us']:6.2f} / {r['barrier_us']:6.2f}")
        print(f"  LM head (after the last barrier)   {tl['lm_head_us']:6.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for batch in batches:
            rs = [r for r in rows if r["batch"] == batch]
            xs = [r["context"] for r in rs]
            ax1.plot(xs, [r["rfa_ms"] * 1e3 for r in rs], "o-", label=f"RFA, B={batch}")
            ax1.plot(xs, [r["softmax_ms"] * 1e3 for r in rs], "s--", label=f"softmax + KV cache, B={batch}")
            ax2.plot(xs, [r["rfa_peak_gib"] for r in rs], "o-", label=f"RFA, B={batch}")
            ax2.plot(xs, [r["softmax_peak_gib"] for r in rs], "s--", label=f"softmax + KV cache, B={batch}")
        for ax, label in ((ax1, "decode step latency (µs)"), (ax2, "peak GPU memory (GiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"8-layer d1024 decode, CUDA graphs, {torch.cuda.get_device_name()}")
        fig.tight_layout()
        fig.savefig(args.out / "decode.png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
