"""The README's main job on the bundled model: load it, score held-out text, generate text.

    python examples/quickstart.py [--prompt TEXT] [--max-new-tokens N]
"""

import argparse
import time
from pathlib import Path

import torch

from rfa_export.corpus import bits_per_byte, pydoc_topics_split, unigram_bits_per_byte
from rfa_export.model.checkpoint import load_checkpoint

BUNDLED = Path(__file__).resolve().parent / "tiny_rfa.pt"


@torch.no_grad()
def generate_greedy(model, prompt: bytes, max_new_tokens: int) -> bytes:
    ids = torch.tensor([list(prompt)])
    logits, state = model(ids)
    token = logits[:, -1].argmax(-1)
    out = []
    for i in range(max_new_tokens):
        out.append(int(token))
        logits, state = model.step(token, state, torch.tensor([len(prompt) + i]))
        token = logits.argmax(-1)
    return bytes(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=BUNDLED)
    ap.add_argument("--prompt", default="The import statement")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    args = ap.parse_args()

    model = load_checkpoint(args.checkpoint)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.checkpoint.name}: {n_params:,} parameters, {cfg.n_layers} layers, {cfg.n_heads} heads, "
          f"{cfg.feature_map} features F={cfg.feature_size}, gated={cfg.gated}")
    train, held = pydoc_topics_split()
    print(f"held-out bits per byte: {bits_per_byte(model, held, block=128):.3f} "
          f"(byte unigram: {unigram_bits_per_byte(train, held):.3f})")
    start = time.perf_counter()
    text = generate_greedy(model, args.prompt.encode(), args.max_new_tokens)
    elapsed = time.perf_counter() - start
    print(f"--- greedy continuation of {args.prompt!r} (PyTorch, {args.max_new_tokens / elapsed:.0f} tokens/s) ---")
    print(args.prompt + text.decode("utf-8", errors="replace"))


if __name__ == "__main__":
    main()
