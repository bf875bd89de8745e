"""Export an RFALanguageModel (or its checkpoint) to OUT_DIR/model.onnx: one stateful graph for prefill
and decode, with the state of every layer as explicit inputs and outputs."""

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import onnx
import torch

from .. import __version__
from ..model.checkpoint import load_checkpoint
from ..model.lm import RFALanguageModel
from ..progress import SILENT, Progress
from .lowering import LOWERINGS, opsets_of
from .metadata import METADATA_FILE, MODEL_FILE, ExportMetadata, StateSpec, TensorSpec, attach_metadata
from .module_export import export_module

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot hold more than 2 GB; go external well before that
STATE_IN = "past_key_values.{}.recurrent_state"
STATE_OUT = "present.{}.recurrent_state"


class StatefulDecoder(torch.nn.Module):
    """The exported signature: (input_ids, attention_mask, [position_ids], past states) ->
    (logits fp32, present states). attention_mask is [batch, total_sequence_length] as decoders feed it;
    only its last `sequence` columns are read."""

    def __init__(self, model: RFALanguageModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, past_key_values, position_ids=None):
        mask = attention_mask[:, attention_mask.shape[1] - input_ids.shape[1]:]
        logits, state = self.model(input_ids, list(past_key_values), position_ids, mask)
        return (logits.float(), *state)


def describe_export(model: RFALanguageModel, lowering: str, dtype: str, genai: bool = False) -> ExportMetadata:
    cfg = model.config
    inputs = [
        TensorSpec("input_ids", ["batch", "sequence"], "int64", "token ids"),
        TensorSpec("attention_mask", ["batch", "total_sequence_length"], "int64",
                   "nonzero for real tokens, 0 for padding (the state is left unchanged there); "
                   "only the last `sequence` columns are read"),
    ]
    if cfg.positional != "none":
        inputs.append(TensorSpec("position_ids", ["batch", "sequence"], "int64", "absolute position of each token"))
    state = [StateSpec(i, STATE_IN.format(i), STATE_OUT.format(i), ["batch", *cfg.state_shape]) for i in range(cfg.n_layers)]
    outputs = [TensorSpec("logits", ["batch", "sequence", cfg.vocab_size], "float32", "next-token logits")]
    opsets = opsets_of(lowering) if lowering in LOWERINGS else {}
    return ExportMetadata(lowering=lowering, dtype=dtype, opsets=opsets, inputs=inputs, outputs=outputs,
                          state=state, config=cfg.to_dict(), producer=f"rfa-export {__version__}", genai=genai)


def language_model_to_onnx(model: RFALanguageModel, lowering: str = "plugin", dtype: str = "fp32",
                           progress: Progress = SILENT, genai: bool = False):
    """(ModelProto, ExportMetadata) for the model; nothing is written. genai=True adds the
    onnxruntime-genai shim (see add_genai_shim)."""
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown --scan {lowering!r}; choose one of {', '.join(LOWERINGS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    model = copy.deepcopy(model).eval().to(DTYPES[dtype])
    cfg = model.config
    meta = describe_export(model, lowering, dtype)
    B, T, P = 2, 3, 5  # sample sizes >= 2 and distinct, so no dynamic axis is specialised or tied
    sample = {
        "input_ids": torch.zeros(B, T, dtype=torch.int64),
        "attention_mask": torch.ones(B, P, dtype=torch.int64),
        "past_key_values": [torch.zeros(B, *cfg.state_shape) for _ in range(cfg.n_layers)],
    }
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence_length"},
        "past_key_values": [{0: "batch"}] * cfg.n_layers,
    }
    if cfg.positional != "none":
        sample["position_ids"] = torch.arange(T).expand(B, T).contiguous()
        axes["position_ids"] = {0: "batch", 1: "sequence"}
    names = ["input_ids", "attention_mask"] + [s.input for s in meta.state]
    names += ["position_ids"] if cfg.positional != "none" else []
    out_names = ["logits"] + [s.output for s in meta.state]
    with progress.step(f"tracing and converting with torch.onnx (--scan {lowering}, --dtype {dtype})"):
        proto = export_module(StatefulDecoder(model).eval(), sample, out_names, axes, lowering=lowering, input_names=names,
                              check=False)  # write_export checks the final file
    if genai:
        add_genai_shim(proto, meta)
    _order_inputs(proto, [t.name for t in meta.inputs] + [s.input for s in meta.state])
    proto.doc_string = f"RFA language model exported by rfa-export {__version__}; see {METADATA_FILE}"
    proto.producer_name, proto.producer_version = "rfa-export", __version__
    attach_metadata(proto, meta)
    return proto, meta


GENAI_CONV_IN = "past_key_values.{}.conv_state"
GENAI_CONV_OUT = "present.{}.conv_state"
GENAI_CONFIG_FILE = "genai_config.json"


def add_genai_shim(proto: onnx.ModelProto, meta: ExportMetadata) -> None:
    """onnxruntime-genai 0.18 binds a conv_state next to every recurrent_state and refuses a model without
    it. The smallest faithful shim: per layer a [batch, 1, 1] float input passed through unchanged by an
    Identity to the matching output; the model never reads it."""
    for spec in meta.state:
        i = spec.layer
        name_in, name_out = GENAI_CONV_IN.format(i), GENAI_CONV_OUT.format(i)
        proto.graph.input.append(onnx.helper.make_tensor_value_info(name_in, onnx.TensorProto.FLOAT, ["batch", 1, 1]))
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name_out, onnx.TensorProto.FLOAT, ["batch", 1, 1]))
        proto.graph.node.append(onnx.helper.make_node("Identity", [name_in], [name_out], name=f"genai_conv_state_{i}"))
        meta.extra_state.append(StateSpec(i, name_in, name_out, ["batch", 1, 1], layout="onnxruntime-genai shim: passed "
                                          "through unchanged and never read by the model (docs/genai.md)"))
    meta.genai = True
    attach_metadata(proto, meta)


def genai_config(meta: ExportMetadata, context_length: int = 65536, eos_token_id: int = 0, pad_token_id: int = 0) -> dict:
    """genai_config.json for an export with the shim. Byte-level models use 0 (NUL) as end and padding: it
    never occurs in text, and genai pads ragged batches on the right with pad_token_id."""
    return {
        "model": {
            "type": "decoder",
            "context_length": context_length,
            "vocab_size": meta.vocab_size,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "bos_token_id": pad_token_id,
            "decoder": {"filename": MODEL_FILE, "num_hidden_layers": len(meta.state)},
        },
        "search": {"max_length": context_length, "do_sample": False},
    }


def _order_inputs(proto: onnx.ModelProto, order):
    by_name = {i.name: i for i in proto.graph.input}
    ordered = [copy.deepcopy(by_name[n]) for n in order if n in by_name]
    ordered += [copy.deepcopy(i) for i in proto.graph.input if i.name not in order]
    del proto.graph.input[:]
    proto.graph.input.extend(ordered)


def check_exported(proto: onnx.ModelProto, path: Optional[Path] = None) -> None:
    """onnx.checker with full_check, which includes shape inference with type checks in strict mode (an
    inference error fails the check). On the file when the weights are external (protobuf's 2 GB limit)."""
    onnx.checker.check_model(str(path) if path is not None else proto, full_check=True)


def write_export(proto: onnx.ModelProto, meta: ExportMetadata, out_dir: Union[str, Path], progress: Progress = SILENT,
                 extra_files: Optional[dict] = None) -> Path:
    """Write OUT_DIR/model.onnx (+ model.onnx.data when large) and rfa_export.json, atomically: everything is
    written in a temporary folder inside OUT_DIR and renamed into place, the model last; on failure
    nothing new is left behind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".rfa-export-", dir=out_dir))
    try:
        weights = sum(len(t.raw_data) for t in proto.graph.initializer)
        external = weights > EXTERNAL_DATA_THRESHOLD
        with progress.step(f"writing {MODEL_FILE} ({weights / 1e6:.1f} MB of weights{', external data' if external else ''})"):
            tmp_model = tmp / MODEL_FILE
            if external:
                onnx.save_model(proto, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=MODEL_FILE + ".data", size_threshold=1024)
            else:
                onnx.save_model(proto, str(tmp_model))
            (tmp / METADATA_FILE).write_text(meta.to_json())
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if meta.genai and GENAI_CONFIG_FILE not in (extra_files or {}):
                (tmp / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(meta), indent=2) + "\n")
        with progress.step("checking (onnx.checker full_check: structure and strict shape inference)"):
            check_exported(proto if not external else None, tmp_model if external else None)
        stale = [out_dir / (MODEL_FILE + ".data")] if not external else []
        stale += [out_dir / GENAI_CONFIG_FILE] if not meta.genai else []
        for path in stale:
            if path.exists():
                path.unlink()
        for name in sorted(os.listdir(tmp), key=lambda n: n == MODEL_FILE):  # the model file last
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / MODEL_FILE


def export_checkpoint(checkpoint: Union[str, Path], out_dir: Union[str, Path], lowering: str = "plugin",
                      dtype: str = "fp32", progress: Progress = SILENT, genai: bool = False) -> ExportMetadata:
    """rfa-export MODEL.pt -o OUT_DIR [--genai], as a function."""
    with progress.step(f"loading {checkpoint}"):
        model = load_checkpoint(checkpoint)
    proto, meta = language_model_to_onnx(model, lowering, dtype, progress, genai=genai)
    write_export(proto, meta, out_dir, progress)
    return meta
