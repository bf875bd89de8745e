"""Plot where the one-kernel B1 step's µs go, from bench_decode_gpu.py --timeline's JSON (its b1_timeline, per
stage of a layer: µs of work and µs waiting at the grid barrier after it): the layer pattern drawn once per
layer, then the LM head, in time order.

    python benchmarks/plot_step_timeline.py benchmarks/results/decode_h100_444b5dc.json OUT.png
"""

import argparse
import json
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("decode_json", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    data = json.loads(args.decode_json.read_text())
    timeline = data.get("b1_timeline")
    if not timeline:
        raise SystemExit(f"{args.decode_json}: no b1_timeline (run bench_decode_gpu.py with --timeline)")
    n_layers = data["config"]["n_layers"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = timeline["per_layer"]
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(12, 2.8))
    t = 0.0
    for layer in range(n_layers):
        for i, s in enumerate(stages):
            ax.barh(0, s["work_us"], left=t, color=colours[i], label=s["stage"] if layer == 0 else None)
            t += s["work_us"]
            ax.barh(0, s["barrier_us"], left=t, color="0.8", label="grid barrier" if layer == 0 and i == 0 else None)
            t += s["barrier_us"]
    ax.barh(0, timeline["lm_head_us"], left=t, color=colours[len(stages)], label="LM head")
    t += timeline["lm_head_us"]
    ax.set_yticks([])
    ax.set_xlabel("µs from the step's start (block 0's clock)")
    ax.set_title(f"one-kernel B1 decode step, {n_layers} layers: {t:.0f} µs of stages ({timeline['kernel_us']:.0f} µs "
                 f"kernel), {data['gpu']}")
    ax.legend(ncol=4, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
