"""What a reduced-precision state costs in quality (CPU; docs/op_contract.md, "State dtype").

    python benchmarks/bench_state_dtype_quality.py [--bytes 65536] [--steps 65536] [--out benchmarks/results]

1. The bundled model (examples/tiny_rfa.pt): held-out bits/byte over --bytes bytes of continuous decoding,
   one token per step, the state carried across the whole text (the held-out pydoc topics, repeated to the
   length), with the state stored as
   - float32 (the reference), and bfloat16 and int8 rows through the model itself (config state_dtype);
   - emulated on the float32 state after every step (not implemented as a storage format): bfloat16 with
     stochastic rounding, fp8-e4m3 with one absmax scale per state row (F rows of Dv + 1).
2. The op alone against float64: relative error of the output and of the state after 1k, 8k and 64k decode
   steps (one call per step, so one rounding per step: the worst case), for three gate regimes: fast gates
   (g ~ sigmoid(N(2, 0.5)) ~ 0.88), slow gates (sigmoid(N(7, 0.5)) ~ 0.999) and no gate; float32, bfloat16
   rounded to nearest (what the kernels do), int8 rows (the op's own storage), bfloat16 with stochastic
   rounding (emulated).

Writes state_dtype_quality.json to --out and prints both tables.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from rfa_export.corpus import bytes_to_ids, pydoc_topics_split
from rfa_export.model.checkpoint import load_checkpoint
from rfa_export.ops.causal_gated_scan import bounded_readout
from rfa_export.ops.causal_gated_scan.state_storage import narrow_state, widen_state

ROOT = Path(__file__).resolve().parents[1]
MARKS = (1024, 8192, 65536)


def round_bf16(s: torch.Tensor) -> torch.Tensor:
    return s.to(torch.bfloat16).float()


def stochastic_bf16(s: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Round to a neighbouring bf16 with probability by distance: add 16 random low bits, truncate."""
    noise = torch.randint(0, 1 << 16, s.shape, dtype=torch.int32, generator=gen)
    return ((s.view(torch.int32) + noise) & ~0xFFFF).view(torch.float32)


def per_row(s: torch.Tensor, qmax: float, rnd) -> torch.Tensor:
    scale = s.abs().amax(-1, keepdim=True) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return rnd(s / scale) * scale


def int8_rows(s: torch.Tensor) -> torch.Tensor:
    """Stored as the op stores an int8 state (power-of-two row scales), then widened back."""
    return widen_state(narrow_state(s, torch.int8), s.shape[-1] - 1, s.dtype)


def fp8_rows(s):
    return per_row(s, 448.0, lambda x: x.to(torch.float8_e4m3fn).float())


@torch.no_grad()
def model_bits_per_byte(n_bytes: int) -> dict:
    model = load_checkpoint(ROOT / "examples" / "tiny_rfa.pt").eval()
    _, held = pydoc_topics_split()
    text = held * (n_bytes // len(held) + 2)
    ids = bytes_to_ids(text[: n_bytes + 1])
    gen = torch.Generator().manual_seed(0)
    emulated = {"float32": None, "bfloat16, stochastic rounding (emulated)": lambda s: stochastic_bf16(s, gen),
                "fp8-e4m3, per-row scale (emulated)": fp8_rows}
    names = list(emulated)
    stored = [model.with_state_dtype(d).eval() for d in ("bfloat16", "int8")]  # the model's own storage
    state = model.initial_state(len(names))
    stored_states = [m.initial_state(1) for m in stored]
    nll = torch.zeros(len(names) + len(stored), dtype=torch.float64)
    marks = {}
    for t in range(n_bytes):
        logits, state = model(ids[t].expand(len(names), 1), state, torch.full((len(names), 1), t))
        rows = [logits[:, 0]]
        for i, m in enumerate(stored):
            out, stored_states[i] = m(ids[t].view(1, 1), stored_states[i], torch.full((1, 1), t))
            rows.append(out[:, 0])
        logp = torch.log_softmax(torch.cat(rows).double(), -1)[:, ids[t + 1]]
        nll -= logp
        for i, name in enumerate(names):
            if emulated[name] is not None:
                for s in state:
                    s[i] = emulated[name](s[i])
        if t + 1 in MARKS or t + 1 == n_bytes:
            marks[t + 1] = (nll / (t + 1) / math.log(2)).tolist()
    columns = ["float32", "bfloat16 (state_dtype)", "int8 rows (state_dtype)"] + names[1:]
    order = [0, len(names), len(names) + 1] + list(range(1, len(names)))
    return {"bytes": n_bytes, "columns": columns,
            "bits_per_byte": {str(k): [round(v[i], 5) for i in order] for k, v in marks.items()}}


def op_errors(steps: int, seed: int = 0) -> dict:
    """Decode-style recurrence (B 2, H 4, F 64, Dv 32), one rounding per step, against float64."""
    B, H, F, Dv = 2, 4, 64, 32
    results = {}
    for regime in ("fast gates", "slow gates", "no gate"):
        gen = torch.Generator().manual_seed(seed)
        sr_gen = torch.Generator().manual_seed(seed + 1)
        ref = torch.zeros(B, H, F, Dv + 1, dtype=torch.float64)
        kinds = {"float32": lambda s: s, "bfloat16": round_bf16, "int8 rows": int8_rows,
                 "bfloat16, stochastic rounding (emulated)": lambda s: stochastic_bf16(s, sr_gen)}
        states = {k: torch.zeros(B, H, F, Dv + 1) for k in kinds}
        errs = {k: {} for k in kinds}
        for t in range(steps):
            q = torch.randn(B, H, F, generator=gen, dtype=torch.float64).abs() / F**0.5
            k = torch.randn(B, H, F, generator=gen, dtype=torch.float64).abs() / F**0.5
            v = torch.randn(B, H, Dv, generator=gen, dtype=torch.float64)
            kv = k[..., None] * torch.cat([v, torch.ones(B, H, 1, dtype=torch.float64)], -1)[..., None, :]
            if regime == "no gate":
                g = torch.ones(B, H, 1, 1, dtype=torch.float64)
                w = g
            else:
                mu = 2.0 if regime == "fast gates" else 7.0
                g = torch.sigmoid(mu + 0.5 * torch.randn(B, H, 1, 1, generator=gen, dtype=torch.float64))
                w = 1 - g
            ref = g * ref + w * kv
            num = torch.einsum("bhf,bhfd->bhd", q, ref)
            out_ref = bounded_readout(num[..., :Dv], num[..., Dv], 1e-3)
            record = t + 1 in MARKS or t + 1 == steps
            for name, store in kinds.items():
                new = g.float() * states[name] + w.float() * kv.float()  # fp32 within the call
                if record:
                    num = torch.einsum("bhf,bhfd->bhd", q.float(), new)
                    out = bounded_readout(num[..., :Dv], num[..., Dv], 1e-3)
                states[name] = store(new)  # rounded once, on store
                if record:
                    errs[name][str(t + 1)] = {
                        "out": float((out.double() - out_ref).abs().max() / out_ref.abs().max()),
                        "state": float((states[name].double() - ref).abs().max() / ref.abs().max())}
        results[regime] = errs
    return {"steps": steps, "shape": {"B": B, "H": H, "F": F, "Dv": Dv}, "errors": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=65536)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    result = {"model": model_bits_per_byte(args.bytes), "op": op_errors(args.steps)}
    result["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "state_dtype_quality.json").write_text(json.dumps(result, indent=2) + "\n")

    m = result["model"]
    print(f"bundled model, held-out bits/byte over {m['bytes']:,} bytes of continuous decoding")
    print("| bytes | " + " | ".join(m["columns"]) + " |")
    print("|---" * (len(m["columns"]) + 1) + "|")
    for n, row in m["bits_per_byte"].items():
        print(f"| {int(n):,} | " + " | ".join(f"{x:.4f}" for x in row) + " |")
    print("\nop, relative error against float64 (output / state) after N decode steps")
    for regime, errs in result["op"]["errors"].items():
        for name, by_step in errs.items():
            cells = " | ".join(f"{e['out']:.1e} / {e['state']:.1e}" for e in by_step.values())
            print(f"| {regime} | {name} | {cells} |")


if __name__ == "__main__":
    main()
