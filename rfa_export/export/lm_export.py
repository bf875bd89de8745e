"""Export an RFALanguageModel (or its checkpoint) to OUT_DIR/model.onnx: one stateful graph for prefill
and decode, with the state of every layer as explicit inputs and outputs."""

import copy
from pathlib import Path
from typing import Union

import onnx
import torch

from .. import __version__
from ..format.metadata import METADATA_FILE, ExportMetadata, describe_export
from ..model.checkpoint import load_checkpoint
from ..model.lm import RFALanguageModel
from ..progress import SILENT, Progress
from .genai import add_genai_shim
from .lowering import LOWERINGS, opsets_of
from .module_export import export_module
from .writing import write_export

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP16_MAX = 65504.0
# sample sizes of the dynamic axes: >= 2 (torch.export specialises size 1) and distinct (no two axes tied)
SAMPLE_SIZES = {"batch": 2, "sequence": 3, "total_sequence_length": 5}


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
    return describe_export(model.config, lowering, dtype, opsets_of(lowering), f"rfa-export {__version__}", genai)


def export_arguments(meta: ExportMetadata):
    """(sample inputs, dynamic axes, ONNX input names) for StatefulDecoder.forward, all derived from the
    export's description of its inputs and state (format/metadata.describe_export)."""
    def tensor(name, shape, dtype):
        dims = [SAMPLE_SIZES[d] if isinstance(d, str) else d for d in shape]
        if name == "position_ids":
            return torch.arange(dims[1]).expand(*dims).contiguous()
        fill = torch.ones if name == "attention_mask" else torch.zeros
        return fill(dims, dtype=getattr(torch, dtype))

    def axes_of(shape):
        return {i: d for i, d in enumerate(shape) if isinstance(d, str)}

    specs = {t.name: t for t in meta.inputs}
    sample, axes, names = {}, {}, []
    for arg in ("input_ids", "attention_mask", "past_key_values", "position_ids"):  # forward's order
        if arg == "past_key_values":
            sample[arg] = [tensor(s.input, s.shape, s.dtype) for s in meta.state]
            axes[arg] = [axes_of(s.shape) for s in meta.state]
            names += [s.input for s in meta.state]
        elif arg in specs:
            sample[arg] = tensor(arg, specs[arg].shape, specs[arg].dtype)
            axes[arg] = axes_of(specs[arg].shape)
            names.append(arg)
    return sample, axes, names


def check_exportable(model, model_type: type, lowering: str, dtype: str) -> None:
    """Refuse what cannot be exported, or would export to a graph that can only give NaN or garbage: another
    kind of model, an unknown lowering or dtype, non-finite weights, a normaliser bound 1/eps that does not fit
    float16."""
    if not isinstance(model, model_type):
        raise TypeError(f"model must be an {model_type.__name__}, got {type(model).__name__} (a checkpoint file "
                        "exports with `rfa-export MODEL.pt -o OUT_DIR`)")
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown --lowering {lowering!r}; choose one of {', '.join(LOWERINGS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
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
    check_exportable(model, RFALanguageModel, lowering, dtype)
    model = copy.deepcopy(model).eval().to(DTYPES[dtype])
    meta = describe_language_model(model, lowering, dtype)
    sample, axes, names = export_arguments(meta)
    out_names = [t.name for t in meta.outputs] + [s.output for s in meta.state]
    with progress.step(f"tracing and converting with torch.onnx (--lowering {lowering}, --dtype {dtype})"):
        proto = export_module(StatefulDecoder(model).eval(), sample, out_names, axes, lowering=lowering, input_names=names,
                              check=False)  # write_export checks the final file
    if genai:
        add_genai_shim(proto, meta)
    _order_inputs(proto, [t.name for t in meta.inputs] + [s.input for s in meta.state])
    proto.doc_string = f"RFA language model exported by rfa-export {__version__}; see {METADATA_FILE}"
    proto.producer_name, proto.producer_version = "rfa-export", __version__
    return proto, meta


def _order_inputs(proto: onnx.ModelProto, order):
    by_name = {i.name: i for i in proto.graph.input}
    ordered = [copy.deepcopy(by_name[n]) for n in order if n in by_name]
    ordered += [copy.deepcopy(i) for i in proto.graph.input if i.name not in order]
    del proto.graph.input[:]
    proto.graph.input.extend(ordered)


def export_checkpoint(checkpoint: Union[str, Path], out_dir: Union[str, Path], lowering: str = "plugin",
                      dtype: str = "fp32", progress: Progress = SILENT, genai: bool = False,
                      tokenizer: Union[str, Path, None] = None) -> ExportMetadata:
    """rfa-export MODEL.pt -o OUT_DIR [--genai] [--tokenizer tokenizer.json], as a function."""
    with progress.step(f"loading {checkpoint}"):
        model = load_checkpoint(checkpoint)
    proto, meta = language_model_to_onnx(model, lowering, dtype, progress, genai=genai)
    write_export(proto, meta, out_dir, progress, tokenizer=tokenizer)
    return meta
