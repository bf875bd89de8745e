"""Serving throughput and time to first token: concurrent clients against the same requests one at a time.

    python benchmarks/bench_serve.py OUT_DIR [--clients 1,8,32,64] [--max-tokens 64] [--repeat 5] [--out DIR]
    python benchmarks/bench_serve.py --backend torch --checkpoint examples/tiny_rfa.pt --device cuda [--cuda-graph]

Starts `rfa-export serve` in its own process (so the clients here do not share its interpreter), then for each
client count c: the same c streaming requests (greedy, --max-tokens each) once one after another, then all at
once from c concurrent clients (asyncio + httpx). Per run: tokens/s (generated tokens / wall time) and the
median and 99th percentile of the time to first token; the speedup of c concurrent clients over one client.
The same requests run by the engine alone (a ContinuousBatch in this process, no HTTP) give the ceiling
the server could reach on this machine: the model's own batching gain. Writes serve.json to --out.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = ["The import statement", "A class definition", "Assignment statements are used to", "Exceptions",
           "def f(x):\n    return", "Comparisons", "the with statement", "Lambda expressions"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(client, url, prompt, max_tokens):
    """(time to first token s, tokens) of one streaming request."""
    start = time.perf_counter()
    first, tokens = None, 0
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first if first is not None else time.perf_counter() - start, tokens


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def run(url, clients, max_tokens, repeat):
    """The median (by tokens/s) of `repeat` sequential and of `repeat` concurrent runs of c requests."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    runs = {"sequential": [], "concurrent": []}

    def client():  # one per phase: a connection left idle past uvicorn's keep-alive (5 s) may be closed under us
        return httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4))

    async with client() as c:
        await one(c, url, "warm up", 4)
    for _ in range(repeat):
        async with client() as c:
            start = time.perf_counter()
            rows = [await one(c, url, p, max_tokens) for p in prompts]
            runs["sequential"].append((rows, time.perf_counter() - start))
        async with client() as c:
            start = time.perf_counter()
            rows = await asyncio.gather(*(one(c, url, p, max_tokens) for p in prompts))
            runs["concurrent"].append((rows, time.perf_counter() - start))
    result = {"clients": clients}
    for name, measured in runs.items():
        summaries = []
        for rows, seconds in measured:
            ttft = [t for t, _ in rows]
            summaries.append({"tokens_per_s": sum(n for _, n in rows) / seconds, "ttft_p50_ms": percentile(ttft, 50) * 1e3,
                              "ttft_p99_ms": percentile(ttft, 99) * 1e3, "seconds": seconds})
        summaries.sort(key=lambda r: r["tokens_per_s"])
        result[name] = summaries[len(summaries) // 2]
        result[name]["tokens_per_s_all"] = [r["tokens_per_s"] for r in summaries]
    return result


def engine_alone(args, counts, max_tokens):
    """tokens/s (median of --repeat runs) of c greedy requests run by a ContinuousBatch from prefill to their
    last token, for each c."""
    from rfa_export.runtime import Decoder, SamplingParams, open_backend
    from rfa_export.runtime.batch import ContinuousBatch

    extra = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    if args.cuda_graph:
        extra["cuda_graph"] = True
    decoder = Decoder(open_backend(args.backend, args.out_dir, device=args.device, **extra))
    rates = {}
    for c in [counts[0]] + counts:  # the first count twice: the first runs warm up
        measured = []
        for _ in range(args.repeat):
            batch = ContinuousBatch(decoder)
            start = time.perf_counter()
            batch.add_many([PROMPTS[i % len(PROMPTS)] for i in range(c)], max_tokens, SamplingParams())
            tokens = 0
            while batch.active:
                tokens += sum(e.token is not None for e in batch.step())
            measured.append(tokens / (time.perf_counter() - start))
        rates[c] = sorted(measured)[len(measured) // 2]
    return rates


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", help="export directory (onnxruntime)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cuda-graph", action="store_true", help="serve with --cuda-graph (and the engine alone likewise)")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement; the median is reported")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    port = free_port()
    cmd = [sys.executable, "-m", "rfa_export", "serve", *([args.out_dir] if args.out_dir else []), "--backend", args.backend,
           "--device", args.device, "--port", str(port), "--model-name", "bench", "--max-batch", str(max(counts)),
           "--max-queue", str(4 * max(counts))]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.cuda_graph:
        cmd += ["--cuda-graph"]
    server = subprocess.Popen(cmd, env=os.environ.copy())
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/completions"
        rows = []
        for c in counts:
            r = asyncio.run(run(url, c, args.max_tokens, args.repeat))
            rows.append(r)
        alone = engine_alone(args, counts, args.max_tokens)
        for r in rows:
            r["engine_alone_tokens_per_s"] = alone[r["clients"]]
            r["engine_alone_speedup"] = alone[r["clients"]] / alone[counts[0]]
        base = next((r["concurrent"]["tokens_per_s"] for r in rows if r["clients"] == 1), rows[0]["sequential"]["tokens_per_s"])
        for r in rows:
            r["speedup_over_one_client"] = r["concurrent"]["tokens_per_s"] / base
            s, c = r["sequential"], r["concurrent"]
            print(f"{r['clients']:3d} clients  concurrent {c['tokens_per_s']:8.0f} tok/s (TTFT p50 {c['ttft_p50_ms']:7.1f} ms, "
                  f"p99 {c['ttft_p99_ms']:7.1f} ms)  sequential {s['tokens_per_s']:8.0f} tok/s (TTFT p50 "
                  f"{s['ttft_p50_ms']:6.1f} ms, p99 {s['ttft_p99_ms']:6.1f} ms)  x{r['speedup_over_one_client']:.1f} "
                  f"of one client (engine alone x{r['engine_alone_speedup']:.1f})", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"serve{'_cuda_graph' if args.cuda_graph else ''}.json").write_text(json.dumps({"command": cmd[2:], "max_tokens": args.max_tokens, "rows": rows},
                                                        indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
