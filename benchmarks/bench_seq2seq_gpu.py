"""Encoder-decoder decoding on the GPU: RFA against a softmax encoder-decoder of the same width and depth.

    python benchmarks/bench_seq2seq_gpu.py [--out DIR] [--lengths 32,128,512,2048] [--batches 1,64] [--beams 1,4]

Both models: d_model 512, 8 heads (head dim 64), 6 encoder + 6 decoder layers, FFN 2048, shared vocabulary
32000, sinusoidal positions, bf16 weights and activations, the same linear layers, residual adds and layer norms
(rfa_export/model/linear_layers.py, residual_norm.py): q, k and v through one GEMM in both, and at one row each
residual add and norm inside the kernel of the linear layer after it (q/k/v, FFN1, the LM head). RFA: gated causal self-attention with an fp32 state
(the fused CUDA decode step) and cross attention reading one state per source and layer, F = 128 random
features. Softmax: a static bf16 KV cache for self-attention filled to the target position, and the encoder's
cached keys and values for cross attention (SDPA); like RFA's cross states they are one per source, read by
its beams (queries grouped per source, no copy). Both compute the sinusoidal position of the step. One decoder
step (all layers, the LM head and the argmax that picks the next token, fused into the LM head's kernel for both
models) is captured as a CUDA graph and replayed; its median latency over 50 replays is measured at target
position T/2 (the softmax step grows with the position, RFA's does not), so decode tokens/s = decoder rows
(batch x beams) / latency is the rate over a whole target of length T. Source length S = target length T in
every case. Writes seq2seq.json and seq2seq.png to --out.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from rfa_export.baselines import SoftmaxSeq2Seq
from rfa_export.format.config import RFASeq2SeqConfig
from rfa_export.model.lm import sinusoidal_positions
from rfa_export.model.residual_norm import residual_feed_forward, residual_linear, residual_linear_argmax, residual_norm
from rfa_export.model.seq2seq import RFASeq2Seq
from rfa_export.ops.causal_gated_scan.state_storage import narrow_state
from rfa_export.ops.embedding import scaled_embedding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import measure, time_graph  # noqa: E402  (same capture, warm-up, median of 50 replays and peak)

CONFIG = RFASeq2SeqConfig(src_vocab_size=32000, tgt_vocab_size=32000, d_model=512, n_heads=8, n_encoder_layers=6,
                          n_decoder_layers=6, d_ffn=2048, num_features=64, gated=True, positional="sinusoidal",
                          bos_token_id=1, eos_token_id=2, max_source_length=4096)


@torch.no_grad()
def rfa_step_ms(model: RFASeq2Seq, batch: int, beams: int, position: int):
    rows = batch * beams
    states = [narrow_state(torch.rand(rows, *model.config.cross_state_shape, device="cuda") * 0.01, model.state_dtype)
              for _ in range(CONFIG.n_decoder_layers)]
    cross = [torch.rand(batch, *model.config.cross_state_shape, device="cuda") * 0.01 + 0.001
             for _ in range(CONFIG.n_decoder_layers)]
    token = torch.randint(3, CONFIG.tgt_vocab_size, (rows,), device="cuda")
    pos = torch.full((rows,), position, dtype=torch.long, device="cuda")

    def step():  # greedy: the argmax lands in token (the LM head's own kernel on the decode path)
        model.step(token, states, cross, pos, inplace_state=True, next_token=token)

    return time_graph(step)


class SoftmaxStep(torch.nn.Module):
    """One softmax decoder step at target position L: write k, v there in a static cache, attend over 0..L,
    then cross attention over the source's cached keys and values (one per source, grouped beams)."""

    def __init__(self, model: SoftmaxSeq2Seq, batch: int, beams: int, source: int, position: int):
        super().__init__()
        self.m, self.L, self.batch = model, position, batch
        rows, h, dh = batch * beams, CONFIG.n_heads, CONFIG.head_dim
        bf = dict(device="cuda", dtype=torch.bfloat16)
        self.k = [torch.randn(rows, h, position + 1, dh, **bf) for _ in model.decoder]
        self.v = [torch.randn(rows, h, position + 1, dh, **bf) for _ in model.decoder]
        self.cross = [(torch.randn(batch, h, source, dh, **bf), torch.randn(batch, h, source, dh, **bf))
                      for _ in model.decoder]
        self.position = torch.full((rows, 1), position, device="cuda")  # computed per step, as RFA's decoder does
        # q, k and v through one GEMM, as RFA's decoder projects them (and so the same norm fusion at one row)
        self.qkv = [(torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs]))
                    for projs in ((b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj) for b in model.decoder)]

    def forward(self, token):
        d = CONFIG.d_model
        x = scaled_embedding(token[:, None], self.m.tgt_embed.weight, math.sqrt(d))
        x = x + sinusoidal_positions(self.position, d).to(x.dtype)
        f = None
        for i, block in enumerate(self.m.decoder):
            att = block.self_attn
            x, qkv = residual_linear(x, f, block.ln_self, *self.qkv[i])
            q, k, v = qkv.unflatten(-1, (3, att.h, att.dh)).permute(2, 0, 3, 1, 4)
            self.k[i][:, :, self.L:self.L + 1].copy_(k)
            self.v[i][:, :, self.L:self.L + 1].copy_(v)
            y = att.merge(F.scaled_dot_product_attention(q, self.k[i], self.v[i]), partial_sums=True)
            x, h = residual_norm(x, y, block.ln_cross)
            x, f = residual_feed_forward(x, block.cross_attn.read(h, self.cross[i], partial_sums=True), block.ln_ffn,
                                         block.ffn)
        _, logits = residual_linear_argmax(x, f, self.m.ln_f, self.m.lm_head.weight, self.m.lm_head.bias, token)
        return logits[:, 0]


@torch.no_grad()
def softmax_step_ms(model, batch, beams, source, position):
    step_module = SoftmaxStep(model, batch, beams, source, position)
    token = torch.randint(3, CONFIG.tgt_vocab_size, (batch * beams,), device="cuda")

    def step():
        step_module(token)

    return time_graph(step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--lengths", default="32,128,512,2048")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--beams", default="1,4")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    beam_counts = [int(x) for x in args.beams.split(",")]
    torch.manual_seed(0)
    rfa = RFASeq2Seq(CONFIG).eval().to("cuda", torch.bfloat16)
    rfa_bf16_state = rfa.with_state_dtype("bfloat16").to("cuda", torch.bfloat16)
    soft = SoftmaxSeq2Seq(CONFIG).eval().to("cuda", torch.bfloat16)
    rows = []
    for batch in batches:
        for beams in beam_counts:
            for n in lengths:
                rfa_ms, rfa_gb = measure(rfa_step_ms, rfa, batch, beams, n // 2)
                bf16_ms, _ = measure(rfa_step_ms, rfa_bf16_state, batch, beams, n // 2)
                soft_ms, soft_gb = measure(softmax_step_ms, soft, batch, beams, n, n // 2)
                r = {"batch": batch, "beams": beams, "source": n, "target": n, "rfa_ms": rfa_ms, "rfa_peak_gib": rfa_gb,
                     "softmax_ms": soft_ms, "softmax_peak_gib": soft_gb, "speedup": soft_ms / rfa_ms,
                     "rfa_bf16_state_ms": bf16_ms, "speedup_bf16_state": soft_ms / bf16_ms,
                     "rfa_tokens_per_s": batch * beams / rfa_ms * 1e3, "softmax_tokens_per_s": batch * beams / soft_ms * 1e3}
                rows.append(r)
                print(f"B={batch:3d} beams={beams} S=T={n:5d}  RFA {rfa_ms * 1e3:8.1f} µs ({r['rfa_tokens_per_s']:9.0f} tok/s, "
                      f"{rfa_gb:5.2f} GiB)  softmax {soft_ms * 1e3:8.1f} µs ({r['softmax_tokens_per_s']:9.0f} tok/s, "
                      f"{soft_gb:5.2f} GiB)  x{r['speedup']:.2f}  bf16 state {bf16_ms * 1e3:8.1f} µs x{r['speedup_bf16_state']:.2f}",
                      flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seq2seq.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "config": CONFIG.to_dict(),
                                                       "rows": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
        for ax, batch in zip(axes[0], batches):
            for beams in beam_counts:
                rs = [r for r in rows if r["batch"] == batch and r["beams"] == beams]
                xs = [r["target"] for r in rs]
                ax.plot(xs, [r["rfa_tokens_per_s"] for r in rs], "o-", label=f"RFA, beams {beams}")
                ax.plot(xs, [r["softmax_tokens_per_s"] for r in rs], "s--", label=f"softmax, beams {beams}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("source = target length")
            ax.set_ylabel("decode tokens/s")
            ax.set_title(f"batch {batch}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"6+6-layer d512 encoder-decoder decoding, CUDA graphs, {torch.cuda.get_device_name()}")
        fig.tight_layout()
        fig.savefig(args.out / "seq2seq.png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
