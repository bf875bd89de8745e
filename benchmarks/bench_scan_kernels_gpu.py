"""Our CausalGatedScan CUDA kernels vs fla and onnxruntime-gpu on the shapes of ../shared/docs/anchors.md.

    python benchmarks/bench_scan_kernels_gpu.py [--json results.json] [--cases prefill,decode,graph]

Side by side in one run (triton.testing.do_bench medians, same inputs):
  prefill  B8 T4096 and B1 T16384, H16 F128 Dv64, bf16 activations, fp32 state:
           ours (chunked kernel: the Hopper wgmma prefill on sm_90a builds) | ours with the mma.sync prefill |
           ours with a bf16 state | ours with an int8-row state (widened into the workspace and narrowed
           around the same kernel) | fla chunk_simple_gla | onnxruntime-gpu com.microsoft.LinearAttention (fp32)
  decode   one step, B256 and B1, bf16 activations, fp32 state [B, H, F, Dv + 1]:
           ours (step kernel) | ours with a bf16 state (state_dtype bfloat16: half the bytes) |
           ours with an int8-row state (state_dtype int8: about a quarter) |
           fla fused_recurrent_simple_gla | onnxruntime-gpu LinearAttention (fp32)
  graph    a single-sequence step of an 8-layer stack captured in a CUDA graph, per layer: ours
fla and onnxruntime-gpu rows are skipped (with the reason printed) when the package is missing.
Our op also computes the normaliser (value column of ones + readout), which fla's does not.
"""

import argparse
import json

import torch

from rfa_export.ops.causal_gated_scan import cuda_causal_gated_scan


def bench(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")  # ms


def inputs(B, T, H=16, F=128, Dv=64, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.rand(B, T, H, F, device="cuda", generator=g).to(dtype) * 0.2
    k = torch.rand(B, T, H, F, device="cuda", generator=g).to(dtype) * 0.2
    v = torch.randn(B, T, H, Dv, device="cuda", generator=g).to(dtype)
    gate = (0.9 + 0.099 * torch.rand(B, T, H, device="cuda", generator=g)).to(dtype)
    s0 = torch.rand(B, H, F, Dv + 1, device="cuda", generator=g)
    return q, k, v, gate, s0


def ours(q, k, v, gate, s0, path=None):
    out = torch.empty(v.shape, dtype=v.dtype, device="cuda")
    state = torch.empty_like(s0)
    return lambda: cuda_causal_gated_scan(q, k, v, gate, s0, path=path, out=out, out_state=state)


def ours_bf16_state(q, k, v, gate, s0):
    """The same call on a bf16 state, updated in place as a decoding loop does."""
    state = s0.to(torch.bfloat16)
    out = torch.empty(v.shape, dtype=v.dtype, device="cuda")
    return lambda: cuda_causal_gated_scan(q, k, v, gate, state, out=out, out_state=state)


def ours_int8_state(q, k, v, gate, s0):
    """The same call on an int8-row state (about a quarter of the fp32 bytes), updated in place."""
    from rfa_export.ops.causal_gated_scan.state_storage import narrow_state

    state = narrow_state(s0, torch.int8)
    out = torch.empty(v.shape, dtype=v.dtype, device="cuda")
    return lambda: cuda_causal_gated_scan(q, k, v, gate, state, out=out, out_state=state)


def ours_mma_sync(q, k, v, gate, s0):
    """Our previous prefill (mma.sync) on the same inputs: what the Hopper wgmma kernel replaced."""
    return ours(q, k, v, gate, s0, path=2)


def fla_prefill(q, k, v, gate, s0):
    from fla.ops.simple_gla import chunk_simple_gla

    logg = torch.log(gate.float())
    s = s0[..., :-1].contiguous()
    return lambda: chunk_simple_gla(q, k, v, g=logg, scale=1.0, initial_state=s, output_final_state=True)


def fla_step(q, k, v, gate, s0):
    from fla.ops.simple_gla import fused_recurrent_simple_gla

    logg = torch.log(gate.float())
    s = s0[..., :-1].contiguous()
    return lambda: fused_recurrent_simple_gla(q, k, v, g=logg, scale=1.0, initial_state=s, output_final_state=True)


def ort_linear_attention(q, k, v, gate, s0):
    """com.microsoft.LinearAttention in fp32 with value [v, 1] (our state layout), IO-bound on the GPU."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("onnxruntime-gpu not installed")
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    node = helper.make_node("LinearAttention", ["q", "k", "v", "s", "decay"], ["o", "s_out"], domain="com.microsoft",
                            q_num_heads=H, kv_num_heads=H, scale=1.0, update_rule="gated")
    f = TensorProto.FLOAT
    graph = helper.make_graph([node], "la", [helper.make_tensor_value_info("q", f, [B, T, H * F]),
                                             helper.make_tensor_value_info("k", f, [B, T, H * F]),
                                             helper.make_tensor_value_info("v", f, [B, T, H * (Dv + 1)]),
                                             helper.make_tensor_value_info("s", f, [B, H, F, Dv + 1]),
                                             helper.make_tensor_value_info("decay", f, [B, T, H])],
                              [helper.make_tensor_value_info("o", f, [B, T, H * (Dv + 1)]),
                               helper.make_tensor_value_info("s_out", f, [B, H, F, Dv + 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    ones = torch.ones(B, T, H, 1, device="cuda")
    host = {"q": q.float().reshape(B, T, -1), "k": (k.float() * (1 - gate.float())[..., None]).reshape(B, T, -1),
            "v": torch.cat([v.float(), ones], -1).reshape(B, T, -1), "s": s0, "decay": torch.log(gate.float())}
    vals = {n: ort.OrtValue.ortvalue_from_numpy(t.contiguous().cpu().numpy(), "cuda", 0) for n, t in host.items()}
    io = sess.io_binding()
    for n, val in vals.items():
        io.bind_ortvalue_input(n, val)
    io.bind_ortvalue_output("o", ort.OrtValue.ortvalue_from_shape_and_type([B, T, H * (Dv + 1)], np.float32, "cuda", 0))
    io.bind_ortvalue_output("s_out", ort.OrtValue.ortvalue_from_shape_and_type([B, H, F, Dv + 1], np.float32, "cuda", 0))
    return lambda: sess.run_with_iobinding(io)


def graphed_step_per_layer(layers=8, H=16, F=128, Dv=64):
    q, k, v, gate, s0 = inputs(1, 1, H, F, Dv)
    states = [s0.clone() for _ in range(layers)]
    outs = [torch.empty_like(v) for _ in range(layers)]
    run = lambda: [cuda_causal_gated_scan(q, k, v, gate, states[i], out=outs[i], out_state=states[i]) for i in range(layers)]  # noqa: E731
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        run()
        stream.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            run()
    torch.cuda.synchronize()
    return bench(graph.replay) / layers


def row(name, make, *args):
    try:
        fn = make(*args)
        fn()
        torch.cuda.synchronize()
        return name, bench(fn), ""
    except Exception as e:  # a missing baseline package: the row says so
        return name, None, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--cases", default="prefill,decode,graph", help="which of prefill, decode and graph to run")
    args = ap.parse_args()
    kinds = set(args.cases.split(","))
    if not kinds <= {"prefill", "decode", "graph"}:
        ap.error(f"--cases: unknown {', '.join(sorted(kinds - {'prefill', 'decode', 'graph'}))}")
    results = {"gpu": torch.cuda.get_device_name(), "rows": []}
    cases = [("prefill", 8, 4096), ("prefill", 1, 16384), ("decode", 256, 1), ("decode", 1, 1)]
    for kind, B, T in (c for c in cases if c[0] in kinds):
        x = inputs(B, T)
        fla = fla_prefill if kind == "prefill" else fla_step
        rows = [row("ours", ours, *x)]
        if kind == "prefill":
            rows.append(row("ours, mma.sync prefill", ours_mma_sync, *x))
        rows.append(row("ours, bf16 state", ours_bf16_state, *x))
        rows.append(row("ours, int8-row state", ours_int8_state, *x))
        rows += [row("fla", fla, *x), row("onnxruntime-gpu LinearAttention fp32", ort_linear_attention, *x)]
        for name, ms, note in rows:
            results["rows"].append({"case": f"{kind} B{B} T{T}", "impl": name, "ms": ms, "note": note})
    if "graph" in kinds:
        results["rows"].append({"case": "graph step B1 (per layer, 8 layers)", "impl": "ours", "ms": graphed_step_per_layer(), "note": ""})
    print(f"# {results['gpu']}, H16 F128 Dv64, bf16 activations, fp32 state (median of triton do_bench)")
    print("| case | implementation | time | note |\n|---|---|---|---|")
    for r in results["rows"]:
        t = "-" if r["ms"] is None else (f"{r['ms'] * 1e3:.1f} µs" if r["ms"] < 1 else f"{r['ms']:.3f} ms")
        print(f"| {r['case']} | {r['impl']} | {t} | {r['note']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
