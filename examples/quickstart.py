"""The README's main job on the bundled model: export it to ONNX, check the export against PyTorch, and
generate text with onnxruntime (tokens/s printed), beside the same decode in PyTorch.

    python examples/quickstart.py [--out out/tiny_rfa] [--prompt TEXT] [--max-new-tokens N]
"""

import argparse
import time
from pathlib import Path

from rfa_export.corpus import bits_per_byte, pydoc_topics_split, unigram_bits_per_byte
from rfa_export.export import export_checkpoint
from rfa_export.model.checkpoint import load_checkpoint
from rfa_export.progress import Progress
from rfa_export.runtime import Decoder, OnnxRuntimeBackend, SamplingParams, TorchBackend
from rfa_export.tools.verify import format_report, verify_export

HERE = Path(__file__).resolve().parent
BUNDLED = HERE / "tiny_rfa.pt"


def timed_generate(decoder, prompt, n, sampling=SamplingParams()):
    start = time.perf_counter()
    result = decoder.generate([prompt], n, sampling)[0]
    return result, len(result.tokens) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=BUNDLED)
    ap.add_argument("--out", type=Path, default=HERE.parent / "out" / "tiny_rfa")
    ap.add_argument("--prompt", default="The import statement")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    args = ap.parse_args()

    model = load_checkpoint(args.checkpoint)
    cfg = model.config
    train, held = pydoc_topics_split()
    print(f"model: {args.checkpoint.name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{cfg.n_layers} layers, {cfg.n_heads} heads, {cfg.feature_map} features F={cfg.feature_size}, gated={cfg.gated}")
    print(f"held-out bits per byte: {bits_per_byte(model, held, block=128):.3f} "
          f"(byte unigram: {unigram_bits_per_byte(train, held):.3f})")

    print(f"exporting to {args.out}/model.onnx")
    export_checkpoint(args.checkpoint, args.out, progress=Progress())
    report = verify_export(args.out, args.checkpoint, lengths=[7, 64], decode_steps=10)
    print("verify: " + format_report(report).splitlines()[-1])

    ort = Decoder(OnnxRuntimeBackend(args.out, threads=2))
    torch_decoder = Decoder(TorchBackend(model))
    greedy, ort_speed = timed_generate(ort, args.prompt, args.max_new_tokens)
    torch_greedy, torch_speed = timed_generate(torch_decoder, args.prompt, args.max_new_tokens)
    same = "identical" if greedy.tokens == torch_greedy.tokens else "DIFFERENT"
    print(f"--- greedy, onnxruntime CPU: {ort_speed:.0f} tokens/s (PyTorch eager: {torch_speed:.0f} tokens/s, "
          f"tokens {same}) ---")
    print(args.prompt + greedy.text)
    sampled, speed = timed_generate(ort, args.prompt, args.max_new_tokens, SamplingParams(0.8, top_k=40, top_p=0.95, seed=0))
    print(f"--- sampled (temperature 0.8, top-k 40, top-p 0.95, seed 0), onnxruntime CPU: {speed:.0f} tokens/s ---")
    print(args.prompt + sampled.text)


if __name__ == "__main__":
    main()
