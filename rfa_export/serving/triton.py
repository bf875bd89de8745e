"""A Triton Inference Server model repository for a language-model export: the sequence batcher with implicit
state keeps every layer's recurrent state on the server between the requests of one sequence.

REPO/<name>/1/model.onnx is the export's graph with Triton's sequence controls wired in:
- START [batch, 1] int32: 1 on a sequence's first request; the graph then reads zeros, not the state it is given
  (the reset does not depend on the server's initial-state handling);
- READY [batch, 1] int32: 0 for a batch slot without a request; its tokens are masked out, so its state passes
  through unchanged;
- CORRID [batch, 1] uint64: the sequence's correlation id, returned as the output `sequence_id`.
REPO/<name>/config.pbtxt: the onnxruntime backend, dynamic batching by the sequence batcher (direct), one
`state` entry per layer (past_key_values.{i}.recurrent_state <-> present.{i}.recurrent_state, fp32, zero
initial state), an explicit max_sequence_idle_microseconds.
"""

import copy
import re
from pathlib import Path
from typing import List, Optional, Union

CONFIG_FILE = "config.pbtxt"
TRITON_STATE_TYPES = {"float32": "TYPE_FP32", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8"}  # StateSpec.dtype -> Triton data_type


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "rfa_model"


def _check_name(name: str) -> str:
    """A model name the caller chose: one directory name of the repository, as given (not rewritten)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.strip(".") == "":
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it is a directory of the repository)")
    return name


def triton_model(export_dir: Union[str, Path]):
    """(ModelProto with the controls wired in, the export's metadata)."""
    import onnx
    from onnx import TensorProto, helper

    from ..format.config import STATE_ONNX_TYPES
    from ..format.export_dir import open_export
    from ..format.metadata import METADATA_KEY

    export = open_export(export_dir)
    meta = export.meta
    if meta.extra_state:
        raise ValueError(f"{export_dir}: a --genai export (its conv_state shim); export without --genai for Triton")
    model = onnx.load(str(export.model_path))  # with external data: Triton gets one self-contained file
    graph = model.graph
    graph.input.extend([helper.make_tensor_value_info("START", TensorProto.INT32, ["batch", 1]),
                        helper.make_tensor_value_info("READY", TensorProto.INT32, ["batch", 1]),
                        helper.make_tensor_value_info("CORRID", TensorProto.UINT64, ["batch", 1])])
    graph.output.append(helper.make_tensor_value_info("sequence_id", TensorProto.UINT64, ["batch", 1]))
    nodes = [
        helper.make_node("Cast", ["START"], ["triton/start_bool"], to=TensorProto.BOOL),
        helper.make_node("Constant", [], ["triton/state_axes"], value=helper.make_tensor("a", TensorProto.INT64, [2], [2, 3])),
        helper.make_node("Unsqueeze", ["triton/start_bool", "triton/state_axes"], ["triton/start4"]),
        # a zero of the state's dtype: a zero state in every format (int8 rows of zero codes are zero whatever
        # the exponent byte, here 0)
        helper.make_node("Constant", [], ["triton/zero"],
                         value=helper.make_tensor("z", STATE_ONNX_TYPES[meta.state[0].dtype], [], [0.0])),
        helper.make_node("Cast", ["READY"], ["triton/ready64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["attention_mask", "triton/ready64"], ["triton/attention_mask"]),
        helper.make_node("Identity", ["CORRID"], ["sequence_id"]),
    ]
    renames = {"attention_mask": "triton/attention_mask"}
    for spec in meta.state:
        new = f"triton/{spec.input}"
        nodes.append(helper.make_node("Where", ["triton/start4", "triton/zero", spec.input], [new]))
        renames[spec.input] = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for name in renames:  # outputs that are inputs passed straight through
        for out in graph.output:
            if out.name == name:
                raise ValueError(f"cannot wire Triton controls: {name} is also an output")
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key="rfa_export.triton_source", value=f"{meta.producer}; model digest "
                                                                    f"{meta.integrity['model']}")
    onnx.checker.check_model(model, full_check=True)
    return model, meta


def triton_config(meta, name: str, max_batch: int = 64, idle_microseconds: int = 60_000_000, gpu: bool = True,
                  plugin_library: Optional[str] = None) -> str:
    """config.pbtxt (text protobuf of Triton's ModelConfig) for the wired model."""
    cfg = meta.model_config
    state_dims = ", ".join(str(d) for d in cfg.state_shape)
    inputs: List[str] = []
    for t in meta.inputs:
        inputs.append(f'  {{ name: "{t.name}" data_type: TYPE_INT64 dims: [ -1 ] }}')
    outputs = [f'  {{ name: "logits" data_type: TYPE_FP32 dims: [ -1, {cfg.vocab_size} ] }}',
               '  { name: "sequence_id" data_type: TYPE_UINT64 dims: [ 1 ] }']
    states = []
    for s in meta.state:
        state_type = TRITON_STATE_TYPES[s.dtype]
        states.append(f'''    {{
      input_name: "{s.input}"
      output_name: "{s.output}"
      data_type: {state_type}
      dims: [ {state_dims} ]
      initial_state: {{ data_type: {state_type} dims: [ {state_dims} ] zero_data: true name: "zeros" }}
    }}''')
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(inputs),
        "]",
        "output [",
        ",\n".join(outputs),
        "]",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {idle_microseconds}",
        "  direct { }",
        "  control_input [",
        '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },',
        '    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },',
        '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }',
        "  ]",
        "  state [",
        ",\n".join(states),
        "  ]",
        "}",
        f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: 1 }} ]",
    ]
    if plugin_library:
        # onnxruntime's TensorRT execution provider dlopens the library (trt_extra_plugin_lib_paths), so it must be
        # the self-registering build; model_operations would hand it to onnxruntime as a custom-op library
        lines += ["optimization { execution_accelerators { gpu_execution_accelerator: [ { name: \"tensorrt\" "
                  f'parameters {{ key: "trt_extra_plugin_lib_paths" value: "{plugin_library}" }} }} ] }} }}']
    return "\n".join(lines) + "\n"


def write_repository(export_dir: Union[str, Path], repo: Union[str, Path], name: Optional[str] = None,
                     max_batch: int = 64, idle_microseconds: int = 60_000_000, gpu: bool = True,
                     plugin_library: Optional[str] = None) -> Path:
    """REPO/<name>/config.pbtxt and REPO/<name>/1/model.onnx, published in one atomic step."""
    import onnx

    from ..format.publish import staged_export

    if not 1 <= max_batch <= 2**31 - 1 or not 1 <= idle_microseconds <= 2**63 - 1:
        raise ValueError("max_batch and idle_microseconds must be positive")
    model, meta = triton_model(export_dir)
    if meta.dtype == "bf16" and not gpu:
        raise ValueError("a bf16 export does not run on onnxruntime's CPU provider, which Triton's onnxruntime backend "
                         "uses for KIND_CPU: leave out --cpu, or export with --dtype fp16 or fp32")
    if plugin_library is not None and meta.lowering != "plugin":
        raise ValueError(f"--plugin-library is for exports with the plugin lowering; this one has {meta.lowering!r}")
    name = _sanitize(Path(export_dir).resolve().name) if name is None else _check_name(name)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise ValueError(f"model repository {repo} exists and is not a directory")
    repo.mkdir(parents=True, exist_ok=True)
    config = triton_config(meta, name, max_batch, idle_microseconds, gpu, plugin_library)
    with staged_export(repo / name, owned=("1", CONFIG_FILE)) as tmp:
        (tmp / "1").mkdir()
        onnx.save_model(copy.deepcopy(model), str(tmp / "1" / "model.onnx"))
        (tmp / CONFIG_FILE).write_text(config)
    return repo / name
