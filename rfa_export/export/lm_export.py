"""Export an RFALanguageModel (or its checkpoint) to OUT_DIR/model.onnx: one stateful graph for prefill
and decode, with the state of every layer as explicit inputs and outputs."""

import copy
import json
from pathlib import Path
from typing import Optional, Union

import onnx
import torch

from .. import __version__
from ..format.metadata import (DATA_FILE, GENAI_CONV_IN, GENAI_CONV_OUT, METADATA_FILE, MODEL_FILE, ExportMetadata,
                               describe_export)
from ..format.model_file import file_digest, seal_model
from ..format.publish import GENAI_CONFIG_FILE, staged_export
from ..model.checkpoint import load_checkpoint
from ..model.lm import RFALanguageModel
from ..progress import SILENT, Progress
from .lowering import LOWERINGS, opsets_of
from .module_export import export_module

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot hold more than 2 GB; go external well before that
FP16_MAX = 65504.0


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


def describe_language_model(model: RFALanguageModel, lowering: str, dtype: str, genai: bool = False) -> ExportMetadata:
    opsets = opsets_of(lowering) if lowering in LOWERINGS else {}
    return describe_export(model.config, lowering, dtype, opsets, f"rfa-export {__version__}", genai)


def check_exportable(model: RFALanguageModel, dtype: str) -> None:
    """Refuse what would export to a graph that can only give NaN or garbage: non-finite weights, and a
    normaliser bound 1/eps that does not fit float16."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"weight {name} contains NaN or infinity")
    if dtype == "fp16" and 1.0 / model.config.normaliser_eps > FP16_MAX:
        raise ValueError(f"normaliser_eps {model.config.normaliser_eps} bounds outputs by {1 / model.config.normaliser_eps:g}, "
                         f"beyond float16's {FP16_MAX:g}: export with --dtype fp32 or bf16")


def language_model_to_onnx(model: RFALanguageModel, lowering: str = "plugin", dtype: str = "fp32",
                           progress: Progress = SILENT, genai: bool = False):
    """(ModelProto, ExportMetadata) for the model; nothing is written (write_export seals the model with its
    metadata and content digest). genai=True adds the onnxruntime-genai shim (see add_genai_shim)."""
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown --scan {lowering!r}; choose one of {', '.join(LOWERINGS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_exportable(model, dtype)
    model = copy.deepcopy(model).eval().to(DTYPES[dtype])
    cfg = model.config
    meta = describe_language_model(model, lowering, dtype)
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
    return proto, meta


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
    meta.extra_state = describe_export(meta.model_config, meta.lowering, meta.dtype, meta.opsets, meta.producer,
                                       genai=True).extra_state
    meta.genai = True


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
    """Write OUT_DIR/model.onnx (+ model.onnx.data when large) and rfa_export.json, sealed with the digest
    of the model's content, published in one atomic step (rfa_export/format/publish.py): on failure OUT_DIR
    keeps what it had."""
    proto = copy.deepcopy(proto)
    with staged_export(out_dir) as tmp:
        weights = sum(len(t.raw_data) for t in proto.graph.initializer)
        external = weights > EXTERNAL_DATA_THRESHOLD
        with progress.step(f"writing {MODEL_FILE} ({weights / 1e6:.1f} MB of weights{', external data' if external else ''})"):
            data_digest = None
            if external:
                onnx.external_data_helper.convert_model_to_external_data(
                    proto, all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
                proto = onnx.external_data_helper.write_external_data_tensors(proto, str(tmp))
                data_digest = file_digest(tmp / DATA_FILE)
            (tmp / MODEL_FILE).write_bytes(seal_model(proto, meta, data_digest))
            (tmp / METADATA_FILE).write_text(meta.to_json())
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if meta.genai and GENAI_CONFIG_FILE not in (extra_files or {}):
                (tmp / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(meta), indent=2) + "\n")
        with progress.step("checking (onnx.checker full_check: structure and strict shape inference)"):
            check_exported(None, tmp / MODEL_FILE)
    return Path(out_dir) / MODEL_FILE


def export_checkpoint(checkpoint: Union[str, Path], out_dir: Union[str, Path], lowering: str = "plugin",
                      dtype: str = "fp32", progress: Progress = SILENT, genai: bool = False) -> ExportMetadata:
    """rfa-export MODEL.pt -o OUT_DIR [--genai], as a function."""
    with progress.step(f"loading {checkpoint}"):
        model = load_checkpoint(checkpoint)
    proto, meta = language_model_to_onnx(model, lowering, dtype, progress, genai=genai)
    write_export(proto, meta, out_dir, progress)
    return meta
