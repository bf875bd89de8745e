"""Train the bundled tiny byte-level gated RFA language model, and the baselines it is reported against.

    python examples/train_tiny.py                       # ~5 min (RFA) + ~2.5 min (softmax) on 2 CPU cores
    python examples/train_tiny.py --steps 50 --out /tmp/t.pt --skip-softmax   # smoke run

Data: CPython's pydoc_data.topics (English documentation shipped with Python), byte-level (vocab 256).
Every 10th topic is held out. Reports held-out bits per byte for the RFA model, a softmax transformer of
the same size trained the same way, and a byte unigram; writes the RFA checkpoint (and a JSON report).
"""

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from rfa_export.baselines import SoftmaxLanguageModel
from rfa_export.corpus import bits_per_byte, bytes_to_ids, pydoc_topics_split, unigram_bits_per_byte
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.model.checkpoint import save_checkpoint

HERE = Path(__file__).resolve().parent


def train(model, train_ids, steps, batch, seq, lr, seed, log_every=50):
    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(train_ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[i : i + seq] for i in idx])
        y = torch.stack([train_ids[i + 1 : i + seq + 1] for i in idx])
        logits = model(x)[0]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {loss.item() / math.log(2):.3f} bits/byte  {time.time() - start:6.1f}s", flush=True)
    model.eval()
    return time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--positional", default="none", choices=["none", "sinusoidal"],
                    help="RFA positions: none (the gated recurrence carries order, any length) or sinusoidal")
    ap.add_argument("--out", type=Path, default=HERE / "tiny_rfa.pt")
    ap.add_argument("--skip-softmax", action="store_true", help="do not train the softmax baseline")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    train_bytes, held_bytes = pydoc_topics_split()
    train_ids = bytes_to_ids(train_bytes)
    print(f"data: {len(train_bytes):,} training bytes, {len(held_bytes):,} held-out bytes (pydoc_data.topics)")
    config = RFAConfig(vocab_size=256, d_model=args.d_model, n_heads=args.heads, n_layers=args.layers,
                       d_ffn=args.ffn, feature_map="gaussian", num_features=args.features, gated=True,
                       positional=args.positional)

    report = {"config": config.to_dict(), "steps": args.steps, "batch": args.batch, "seq": args.seq,
              "unigram_bits_per_byte": unigram_bits_per_byte(train_bytes, held_bytes)}
    rfa = RFALanguageModel(config)
    n_params = sum(p.numel() for p in rfa.parameters())
    print(f"RFA model: {n_params:,} parameters")
    report["rfa_train_seconds"] = train(rfa, train_ids, args.steps, args.batch, args.seq, args.lr, args.seed)
    report["rfa_bits_per_byte"] = bits_per_byte(rfa, held_bytes, block=args.seq)
    report["rfa_bits_per_byte_long_context"] = bits_per_byte(rfa, held_bytes, block=8 * args.seq)
    report["rfa_parameters"] = n_params
    save_checkpoint(rfa, args.out, metadata={
        "trained_on": "pydoc_data.topics (every 10th topic held out)",
        "heldout_bits_per_byte": f"{report['rfa_bits_per_byte']:.4f}",
    })

    if not args.skip_softmax:
        torch.manual_seed(args.seed)
        # Softmax attention has no order without positions: it gets sinusoids, whatever the RFA model uses.
        soft = SoftmaxLanguageModel(dataclasses.replace(config, positional="sinusoidal"))
        report["softmax_parameters"] = sum(p.numel() for p in soft.parameters())
        print(f"softmax baseline: {report['softmax_parameters']:,} parameters")
        report["softmax_train_seconds"] = train(soft, train_ids, args.steps, args.batch, args.seq, args.lr, args.seed)
        report["softmax_bits_per_byte"] = bits_per_byte(soft, held_bytes, block=args.seq)

    print("held-out bits per byte:")
    print(f"  unigram            {report['unigram_bits_per_byte']:.3f}")
    print(f"  RFA (gated)        {report['rfa_bits_per_byte']:.3f}   ({report['rfa_train_seconds']:.0f}s)"
          f"   [{report['rfa_bits_per_byte_long_context']:.3f} in blocks of {8 * args.seq}]")
    if "softmax_bits_per_byte" in report:
        print(f"  softmax attention  {report['softmax_bits_per_byte']:.3f}   ({report['softmax_train_seconds']:.0f}s)")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) and {args.out.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
