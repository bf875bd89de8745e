"""Train the bundled encoder-decoder: numbers in digits -> English words ("421,305" -> "four hundred twenty-one
thousand three hundred five"), byte-level, on 2 CPU cores; the same-size softmax encoder-decoder is trained
the same way as the baseline. Held-out numbers (one in ten, by a fixed hash) are never trained on.

    python examples/train_seq2seq.py [--steps 1500] [--out examples]

Writes examples/number_words_rfa.pt (the bundled model) and examples/number_words.json (the report: held-out
exact match and chrF of both models, greedy, and the training times).
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from rfa_export.baselines import SoftmaxSeq2Seq
from rfa_export.corpus import number_words_pairs
from rfa_export.format.config import RFASeq2SeqConfig
from rfa_export.model.checkpoint import save_seq2seq_checkpoint
from rfa_export.model.seq2seq import RFASeq2Seq

CONFIG = RFASeq2SeqConfig(d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ffn=512, num_features=32,
                          gated=True, positional="sinusoidal", max_source_length=64)
BOS, EOS = CONFIG.bos_token_id, CONFIG.eos_token_id


def batch_tensors(pairs):
    """(src [B, S], src_mask, tgt_in [B, T], tgt_out [B, T], tgt_mask): right-padded bytes; the target
    starts with BOS and ends with EOS."""
    src = [list(s.encode()) for s, _ in pairs]
    tgt = [[BOS] + list(t.encode()) + [EOS] for _, t in pairs]
    S, T = max(map(len, src)), max(map(len, tgt)) - 1
    B = len(pairs)
    src_ids, src_mask = torch.zeros(B, S, dtype=torch.long), torch.zeros(B, S, dtype=torch.long)
    tin, tout, tmask = (torch.zeros(B, T, dtype=torch.long) for _ in range(3))
    for i, (s, t) in enumerate(zip(src, tgt)):
        src_ids[i, : len(s)], src_mask[i, : len(s)] = torch.tensor(s), 1
        tin[i, : len(t) - 1], tout[i, : len(t) - 1], tmask[i, : len(t) - 1] = torch.tensor(t[:-1]), torch.tensor(t[1:]), 1
    return src_ids, src_mask, tin, tout, tmask


def train(model, steps, batch, seed, lr=3e-3, log_every=100):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    data = number_words_pairs(steps * batch, "train", seed)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        src, src_mask, tin, tout, tmask = batch_tensors(data[step * batch:(step + 1) * batch])
        if isinstance(model, RFASeq2Seq) and step % 10 == 0:
            model.resample_features()
        logits = model(src, tin, src_mask, tmask)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tout.flatten(), reduction="none")
        loss = (loss * tmask.flatten()).sum() / tmask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.1f} s", flush=True)
    return time.perf_counter() - start


@torch.no_grad()
def greedy(model, pairs, max_len=80, batch=256):
    """Greedy decoding with the parallel forward re-run per token (model-agnostic, for the report)."""
    model.eval()
    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        src, src_mask, *_ = batch_tensors(chunk)
        ys = torch.full((len(chunk), 1), BOS)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        for _ in range(max_len):
            nxt = model(src, ys, src_mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
            ys = torch.cat([ys, nxt[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        for row in ys[:, 1:].tolist():
            row = row[: row.index(EOS)] if EOS in row else row
            out.append(bytes(t for t in row if t < 256).decode("utf-8", errors="replace"))
    return out


def score(hypotheses, pairs):
    import sacrebleu

    refs = [t for _, t in pairs]
    exact = sum(h == r for h, r in zip(hypotheses, refs)) / len(refs)
    return {"exact_match": exact, "chrf": sacrebleu.corpus_chrf(hypotheses, [refs]).score}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    heldout = number_words_pairs(args.heldout, "test", seed=12345)
    report = {"task": "numbers < 10^6 in digits -> English words, byte-level", "config": CONFIG.to_dict(),
              "steps": args.steps, "batch": args.batch, "heldout_pairs": len(heldout)}
    for name, cls in (("rfa", RFASeq2Seq), ("softmax", SoftmaxSeq2Seq)):
        torch.manual_seed(0)
        model = cls(CONFIG)
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters")
        report[f"{name}_parameters"] = sum(p.numel() for p in model.parameters())
        report[f"{name}_train_seconds"] = train(model, args.steps, args.batch, seed=0)
        report[f"{name}_heldout_greedy"] = score(greedy(model, heldout), heldout)
        print(f"{name}: {report[f'{name}_heldout_greedy']}", flush=True)
        if name == "rfa":
            save_seq2seq_checkpoint(model.eval(), args.out / "number_words_rfa.pt",
                                    metadata={"task": report["task"], "steps": str(args.steps)})
    (args.out / "number_words.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
