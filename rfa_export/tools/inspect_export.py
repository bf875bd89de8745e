"""rfa-export inspect: what an export directory holds."""

from collections import Counter
from pathlib import Path
from typing import Any, Dict

import onnx

from ..format.export_dir import export_kind, open_export, open_seq2seq_export
from ..format.scan_op import DOMAIN, OP_TYPE


def _graph(path: Path) -> Dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph.node)

    def io(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {
        "file": path.name,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "parameters": sum(int(_numel(t)) for t in model.graph.initializer),
        "nodes": len(model.graph.node),
        "scan_nodes": ops.get(f"{DOMAIN}::{OP_TYPE}", 0) + ops.get("LinearAttention", 0) + ops.get("com.microsoft::LinearAttention", 0),
        "local_functions": [f"{f.domain}::{f.name}" + (f" ({f.overload})" if f.overload else "") for f in model.functions],
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
    }


def describe_seq2seq_dir(out_dir: Path) -> Dict[str, Any]:
    export = open_seq2seq_export(out_dir)
    meta = export.meta
    return {
        "directory": str(out_dir), "kind": "encoder-decoder", "lowering": meta.lowering, "dtype": meta.dtype,
        "files": {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()},
        "encoder": _graph(export.encoder_path), "decoder": _graph(export.decoder_path),
        "state": [vars(s) for s in meta.state], "cross_state": [vars(c) for c in meta.cross_state],
        "config": meta.config,
    }


def format_seq2seq(d: Dict[str, Any]) -> str:
    lines = [f"export: {d['directory']} (encoder-decoder)",
             f"  lowering: {d['lowering']}    activations: {d['dtype']}",
             "  files: " + ", ".join(f"{k} ({v / 1e6:.2f} MB)" for k, v in d["files"].items())]
    for graph in ("encoder", "decoder"):
        g = d[graph]
        lines.append(f"{g['file']}: ONNX IR {g['ir_version']}, opsets " + ", ".join(f"{k} {v}" for k, v in g["opsets"].items())
                     + f"; {g['parameters']:,} weight elements, {g['nodes']} nodes, {g['scan_nodes']} scan nodes")
        lines += [f"  in   {v['name']:40s} {v['dtype']:8s} {v['shape']}" for v in g["inputs"]]
        lines += [f"  out  {v['name']:40s} {v['dtype']:8s} {v['shape']}" for v in g["outputs"]]
    lines.append("self state (decoder, fed back): " + ", ".join(f"{s['input']} -> {s['output']}" for s in d["state"]))
    lines.append("cross state (encoder -> decoder, one per source): "
                 + ", ".join(f"{c['output']} -> {c['input']}" for c in d["cross_state"]))
    if d["cross_state"]:
        lines.append(f"  layout: {d['cross_state'][0]['layout']}")
    cfg = d["config"]
    lines.append(f"model: vocab {cfg['src_vocab_size']} -> {cfg['tgt_vocab_size']}, d_model {cfg['d_model']}, "
                 f"{cfg['n_encoder_layers']} + {cfg['n_decoder_layers']} layers, {cfg['n_heads']} heads, "
                 f"{cfg['feature_map']} features D={cfg['num_features']}, gated={cfg['gated']}")
    return "\n".join(lines)


def describe_export_dir(out_dir) -> Dict[str, Any]:
    out_dir = Path(out_dir)
    if export_kind(out_dir) == "seq2seq":
        return describe_seq2seq_dir(out_dir)
    export = open_export(out_dir)  # the JSON equals the model's metadata, the model its content digest
    meta = export.meta
    model = onnx.load(str(export.model_path), load_external_data=False)
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    params = sum(int(_numel(t)) for t in model.graph.initializer)
    ops = Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph.node)

    def io(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {
        "directory": str(out_dir),
        "lowering": meta.lowering,
        "dtype": meta.dtype,
        "genai": meta.genai,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "files": files,
        "parameters": params,
        "nodes": len(model.graph.node),
        "scan_nodes": ops.get(f"{DOMAIN}::{OP_TYPE}", 0) + ops.get("LinearAttention", 0) + ops.get("com.microsoft::LinearAttention", 0),
        "local_functions": [f"{f.domain}::{f.name}" + (f" ({f.overload})" if f.overload else "") for f in model.functions],
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "state": [vars(s) for s in meta.state],
        "extra_state": [vars(s) for s in meta.extra_state],
        "config": meta.config,
    }


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def format_description(d: Dict[str, Any]) -> str:
    if d.get("kind") == "encoder-decoder":
        return format_seq2seq(d)
    lines = [
        f"export: {d['directory']}",
        f"  lowering: {d['lowering']}    activations: {d['dtype']}    genai layout: {'yes' if d['genai'] else 'no'}",
        f"  ONNX IR {d['ir_version']}, opsets: " + ", ".join(f"{k} {v}" for k, v in d["opsets"].items()),
        f"  {d['parameters']:,} weight elements, {d['nodes']} nodes, {d['scan_nodes']} scan nodes"
        + (f", local functions: {', '.join(d['local_functions'])}" if d["local_functions"] else ""),
        "  files: " + ", ".join(f"{k} ({v / 1e6:.2f} MB)" for k, v in d["files"].items()),
        "inputs:",
    ]
    lines += [f"  {v['name']:40s} {v['dtype']:8s} {v['shape']}" for v in d["inputs"]]
    lines.append("outputs:")
    lines += [f"  {v['name']:40s} {v['dtype']:8s} {v['shape']}" for v in d["outputs"]]
    lines.append("state (fed back as the next call's input; initial value zeros):")
    for s in d["state"]:
        lines.append(f"  layer {s['layer']}: {s['input']} -> {s['output']}  {s['dtype']} {s['shape']}")
    if d["state"]:
        lines.append(f"  layout: {d['state'][0]['layout']}")
    for s in d.get("extra_state", []):
        lines.append(f"  shim {s['layer']}: {s['input']} -> {s['output']}  {s['dtype']} {s['shape']} ({s['layout']})")
    cfg = d["config"]
    if cfg:
        lines.append(f"model: vocab {cfg['vocab_size']}, d_model {cfg['d_model']}, {cfg['n_layers']} layers, "
                     f"{cfg['n_heads']} heads, {cfg['feature_map']} features D={cfg['num_features']}, gated={cfg['gated']}, "
                     f"positional={cfg['positional']}")
    return "\n".join(lines)
