"""Where one decode step's µs go, kernel by kernel: a torch profile of CUDA-graph replays of the model's step.

    python benchmarks/profile_decode_step_gpu.py [--batches 1,64] [--context 1024] [--out DIR]

The models and steps of bench_decode_gpu.py (RFA with its default, layer-by-layer step, fp32 and bf16 state;
the softmax model over a KV cache of --context positions), each captured as one CUDA graph and replayed
--reps times under torch.profiler. Per kernel of the step, medians over the replays: its start from the
step's first kernel, its duration, and its share of the step's span: the time from the end of what ran
before it (or its own start, whichever is later) to its own end. Kernels launched as programmatic dependent
launches overlap their predecessors, so shares are smaller than durations; the span is the sum of the shares
and the idle gaps. Writes step_kernels.json and step_kernels.png (the B1 steps' kernels on a time axis: each
kernel's whole duration pale, its share solid) to --out; --plot JSON redraws the plot from such a file.
"""

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode_gpu import CONFIG, capture_graph, rfa_step, softmax_step  # noqa: E402

from rfa_export.baselines import SoftmaxLanguageModel  # noqa: E402
from rfa_export.model import RFALanguageModel  # noqa: E402

GPU_EVENTS = {"kernel", "gpu_memcpy", "gpu_memset"}


def short_name(name: str) -> str:
    """The kernel's function name without return type, namespaces, template arguments or parameters."""
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:  # drop everything inside <...> and (...)
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).split("::")[-1].strip() or name[:60]


def attribute(kernels):
    """kernels: [(start, end)] in start order -> per kernel (idle before it, its share of the span)."""
    cursor = kernels[0][0]
    rows = []
    for start, end in kernels:
        idle = max(0.0, start - cursor)
        share = max(0.0, end - max(cursor, start))
        rows.append((idle, share))
        cursor = max(cursor, end)
    return rows


@torch.no_grad()
def profile_step(step, reps):
    graph = capture_graph(step)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    events = sorted((e for e in events if e.get("cat") in GPU_EVENTS), key=lambda e: e["ts"])
    if not events or len(events) % reps:
        raise SystemExit(f"{len(events)} GPU events for {reps} replays: the profile did not see every kernel")
    per = len(events) // reps
    names = [short_name(e["name"]) for e in events[:per]]
    starts, durs, idles, shares = ([[] for _ in range(per)] for _ in range(4))
    spans = []
    for r in range(reps):
        replay = events[r * per : (r + 1) * per]
        if [short_name(e["name"]) for e in replay] != names:
            raise SystemExit("the replays' kernels differ in order: cannot line them up")
        t0 = replay[0]["ts"]
        intervals = [(e["ts"] - t0, e["ts"] - t0 + e["dur"]) for e in replay]
        for i, ((s, e), (idle, share)) in enumerate(zip(intervals, attribute(intervals))):
            starts[i].append(s)
            durs[i].append(e - s)
            idles[i].append(idle)
            shares[i].append(share)
        spans.append(max(e for _, e in intervals))
    med = statistics.median
    kernels = [{"index": i, "name": names[i], "start_us": med(starts[i]), "duration_us": med(durs[i]),
                "idle_before_us": med(idles[i]), "share_us": med(shares[i])} for i in range(per)]
    by_name = {}
    for k in kernels:
        agg = by_name.setdefault(k["name"], {"name": k["name"], "count": 0, "duration_us": 0.0, "share_us": 0.0})
        agg["count"] += 1
        agg["duration_us"] += k["duration_us"]
        agg["share_us"] += k["share_us"]
    summary = sorted(by_name.values(), key=lambda a: -a["share_us"])
    return {"span_us": med(spans), "kernels_per_step": per, "idle_us": sum(k["idle_before_us"] for k in kernels),
            "kernels": kernels, "by_name": summary}


def report(label, result):
    print(f"{label}: span {result['span_us']:.1f} µs, {result['kernels_per_step']} kernels, "
          f"idle {result['idle_us']:.1f} µs", flush=True)
    for a in result["by_name"]:
        print(f"  {a['name'][:48]:48s} x{a['count']:3d}  share {a['share_us']:7.1f} µs  "
              f"(duration {a['duration_us']:7.1f} µs)", flush=True)


def plot(results, out, gpu=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b1 = [(label, r) for label, r in results.items() if r["batch"] == 1]
    fig, axes = plt.subplots(len(b1), 1, figsize=(13, 1.6 + 1.2 * len(b1)), squeeze=False)
    names = sorted({k["name"] for _, r in b1 for k in r["kernels"]})
    colours = plt.get_cmap("tab20").colors
    colour = {n: colours[i % len(colours)] for i, n in enumerate(names)}
    for ax, (label, r) in zip(axes[:, 0], b1):
        for k in r["kernels"]:
            end = k["start_us"] + k["duration_us"]
            ax.barh(k["index"] % 3, k["duration_us"], left=k["start_us"], height=0.8, color=colour[k["name"]], alpha=0.3)
            ax.barh(k["index"] % 3, k["share_us"], left=end - k["share_us"], height=0.8, color=colour[k["name"]])
        ax.set_yticks([])
        ax.set_xlim(0, max(r["span_us"] for _, r in b1) * 1.01)
        ax.set_title(f"{label}: {r['span_us']:.0f} µs, {r['kernels_per_step']} kernels {gpu}", fontsize=9)
    axes[-1, 0].set_xlabel("µs from the step's first kernel (rows only separate neighbours)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[n]) for n in names]
    fig.legend(handles, names, ncol=3, fontsize=7, loc="lower center")
    fig.tight_layout(rect=(0, 0.04 + 0.012 * len(names), 1, 1))
    fig.savefig(out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--context", type=int, default=1024, help="the softmax model's KV cache length")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--plot", type=Path, help="only redraw step_kernels.png (into --out) from this JSON")
    args = ap.parse_args()
    if args.plot:
        data = json.loads(args.plot.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        plot(data["steps"], args.out / "step_kernels.png", f"({data['gpu']})")
        return
    torch.manual_seed(0)
    rfa = RFALanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    soft = SoftmaxLanguageModel(CONFIG).eval().to("cuda", torch.bfloat16)
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        steps = {f"RFA B{batch} fp32 state": lambda: rfa_step(rfa, batch),
                 f"RFA B{batch} bf16 state": lambda: rfa_step(rfa, batch, torch.bfloat16),
                 f"softmax B{batch} context {args.context}": lambda: softmax_step(soft, batch, args.context)}
        for label, make in steps.items():
            results[label] = {"batch": batch, **profile_step(make(), args.reps)}
            report(label, results[label])
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_kernels.json").write_text(json.dumps(
        {"gpu": torch.cuda.get_device_name(), "config": CONFIG.to_dict(), "steps": results}, indent=2))
    try:
        plot(results, args.out / "step_kernels.png", f"({torch.cuda.get_device_name()})")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
