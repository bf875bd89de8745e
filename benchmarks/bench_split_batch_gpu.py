"""The batched decode step as concurrent row groups: the whole batch as one chain of kernels, or split into P
groups, each its own chain on its own stream inside one CUDA graph.

    python benchmarks/bench_split_batch_gpu.py [--batch 64] [--parts 1,2,4] [--rounds 3] [--out DIR]

At 64 rows the attention steps stream the state (DRAM-bound) while the linear layers and norms between them
are latency-bound and leave the DRAM mostly idle (BENCHMARKS.md, the per-kernel timeline at B64). As P
independent chains, one group's state stream can overlap another group's linear layers and norms; the price is
reading every weight P times (the later reads may come from L2: one layer's weights are 25 MB) and P times the
kernels. Rows are independent in the model, so before timing, one step of each split is checked against the
same groups run one after another on one stream: bit for bit (check_split).
Model of bench_decode_gpu.py, fp32 and bf16 states, CUDA-graph replays, the settings alternating within each
round. Prints per-setting medians over rounds and writes split_batch.json to --out.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from rfa_export.model import RFALanguageModel
from rfa_export.ops.causal_gated_scan.state_storage import narrow_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG, capture_graph, replay_ms  # noqa: E402


def grouped_step(model, token, states, positions, parts, concurrent=True):
    """A closure running model.step (greedy, state in place, next token into `token`) on `parts` equal row
    groups, each on a stream of its own forked from and joined back into the current one (concurrent), or one
    after another on the current stream."""
    rows = token.shape[0] // parts
    groups = [slice(i * rows, (i + 1) * rows) for i in range(parts)]
    streams = [torch.cuda.Stream() for _ in groups]

    def step():
        if parts == 1:
            model.step(token, states, positions, inplace_state=True, next_token=token)
            return
        main = torch.cuda.current_stream()
        if not concurrent:
            for rows_of in groups:
                model.step(token[rows_of], [s[rows_of] for s in states], positions[rows_of], inplace_state=True,
                           next_token=token[rows_of])
            return
        for rows_of, stream in zip(groups, streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                model.step(token[rows_of], [s[rows_of] for s in states], positions[rows_of], inplace_state=True,
                           next_token=token[rows_of])
        for stream in streams:
            main.wait_stream(stream)

    return step


def inputs(batch, state_dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    states = [narrow_state(torch.rand(batch, *CONFIG.state_shape, device="cuda", generator=g) * 0.01, state_dtype)
              for _ in range(CONFIG.n_layers)]
    token = torch.randint(0, CONFIG.vocab_size, (batch,), device="cuda", generator=g)
    return token, states, torch.zeros(batch, dtype=torch.long, device="cuda")


@torch.no_grad()
def check_split(model, batch, parts, state_dtype):
    """One eager step split into `parts` groups on their own streams against the same groups run one after
    another on one stream: bit for bit (no race between the groups). The groups' step differs from the whole
    batch's only by rounding: fewer rows may take other GEMM tiles, another summation order (printed)."""
    token, states, pos = inputs(batch, state_dtype)
    runs = {}
    for name, concurrent in (("serial", False), ("streams", True)):
        t, st = token.clone(), [s.clone() for s in states]
        grouped_step(model, t, st, pos, parts, concurrent)()
        torch.cuda.synchronize()
        runs[name] = (t, st)
    (t1, s1), (t2, s2) = runs["serial"], runs["streams"]
    assert torch.equal(t1, t2) and all(torch.equal(a, b) for a, b in zip(s1, s2)), \
        f"{parts} groups: the step on concurrent streams differs from the groups run one after another"
    whole_t, whole_s = token.clone(), [s.clone() for s in states]
    grouped_step(model, whole_t, whole_s, pos, 1)()
    error = max(((b.float() - a.float()).norm() / a.float().norm()).item() for a, b in zip(whole_s, s1))
    print(f"check: {parts} groups, {state_dtype} state: concurrent = serial bit for bit; against the whole batch "
          f"{int((whole_t != t1).sum())} next tokens differ, states by {error:.1e} (relative norm)", flush=True)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--parts", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    parts = [int(p) for p in args.parts.split(",")]
    if any(p < 1 or args.batch % p for p in parts):
        sys.exit(f"bench_split_batch_gpu: every --parts must divide --batch {args.batch}")
    torch.manual_seed(0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    model = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)  # the state's dtype picks the kernels
    for name, dtype in dtypes.items():
        for p in parts:
            check_split(model, args.batch, p, dtype)
    graphs = {}
    for name, dtype in dtypes.items():
        for p in parts:
            token, states, pos = inputs(args.batch, dtype)
            graphs[(name, p)] = (capture_graph(grouped_step(model, token, states, pos, p)), token, states)
    samples = {key: [] for key in graphs}
    for r in range(args.rounds):
        for key, (graph, _, _) in graphs.items():
            times = replay_ms(graph)
            samples[key].append(times[len(times) // 2] * 1e3)
        print(f"round {r + 1}: " + "  ".join(f"{n} P{p} {samples[(n, p)][-1]:.1f}" for n, p in graphs), flush=True)
    rows = [{"state": n, "parts": p, "median_us": statistics.median(samples[(n, p)]), "rounds_us": samples[(n, p)]}
            for n, p in graphs]
    print(f"\nB{args.batch} step, µs (medians over {args.rounds} rounds), {torch.cuda.get_device_name()}")
    print("| row groups | " + " | ".join(f"{n} state" for n in dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    for p in parts:
        print(f"| {p} | " + " | ".join(f"{statistics.median(samples[(n, p)]):.1f}" for n in dtypes) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "split_batch.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "batch": args.batch,
                                                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
