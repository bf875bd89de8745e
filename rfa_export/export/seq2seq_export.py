"""Export an RFASeq2Seq (or its checkpoint) to OUT_DIR/encoder_model.onnx + decoder_model.onnx: the encoder
gives every decoder layer's cross state once per source; the decoder serves prefill and step with its self
state in and out and the cross states as inputs (docs/seq2seq.md)."""

import copy
import shutil
from pathlib import Path
from typing import Dict, Tuple, Union

import onnx
import torch

from .. import __version__
from ..format.metadata import METADATA_FILE
from ..format.model_file import file_digest, seal_models
from ..format.publish import staged_export
from ..format.seq2seq_metadata import Seq2SeqExportMetadata, describe_seq2seq_export
from ..format.tokenizer_file import TOKENIZER_FILE, describe_tokenizer
from ..model.checkpoint import load_seq2seq_checkpoint
from ..model.seq2seq import RFASeq2Seq
from ..progress import SILENT, Progress
from .lm_export import DTYPES, _order_inputs, check_exportable
from .lowering import opsets_of
from .module_export import export_module
from .writing import EXTERNAL_DATA_THRESHOLD, check_exported

# >= 2 and distinct (torch.export specialises size 1 and ties equal sizes); decoder_batch a multiple of batch
SAMPLE_SIZES = {"batch": 2, "decoder_batch": 4, "encoder_sequence_length": 5, "sequence": 3,
                "total_sequence_length": 6}


class EncoderGraph(torch.nn.Module):
    def __init__(self, model: RFASeq2Seq):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        hidden, cross = self.model.encode(input_ids, attention_mask)
        return (hidden.float(), *cross)


class DecoderGraph(torch.nn.Module):
    """(input_ids, attention_mask, self states, cross states, [position_ids]) -> (logits fp32, self states).
    attention_mask is [decoder_batch, total_sequence_length]; only its last `sequence` columns are read."""

    def __init__(self, model: RFASeq2Seq):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, past_key_values, cross_states, position_ids=None):
        mask = attention_mask[:, attention_mask.shape[1] - input_ids.shape[1]:]
        logits, state = self.model.decode(input_ids, list(cross_states), list(past_key_values), position_ids, mask)
        return (logits.float(), *state)


def _tensor(name: str, shape, dtype: str) -> torch.Tensor:
    dims = [SAMPLE_SIZES[d] if isinstance(d, str) else d for d in shape]
    if name == "position_ids":
        return torch.arange(dims[1]).expand(*dims).contiguous()
    if name == "attention_mask":
        return torch.ones(dims, dtype=torch.int64)
    if name == "input_ids":
        return torch.zeros(dims, dtype=torch.int64)
    if dtype == "int8":  # int8 rows: zero codes, exponent 0
        return torch.zeros(dims, dtype=torch.int8)
    return (torch.rand(dims) * 0.1 + (0.5 if name.endswith("cross_state") else 0.0)).to(getattr(torch, dtype))


def _axes(shape):
    return {i: d for i, d in enumerate(shape) if isinstance(d, str)}


def seq2seq_to_onnx(model: RFASeq2Seq, lowering: str = "plugin", dtype: str = "fp32",
                    progress: Progress = SILENT) -> Tuple[Dict[str, onnx.ModelProto], Seq2SeqExportMetadata]:
    """({file name: ModelProto}, metadata) for both graphs; nothing is written."""
    check_exportable(model, RFASeq2Seq, lowering, dtype)
    model = copy.deepcopy(model).eval().to(DTYPES[dtype])
    meta = describe_seq2seq_export(model.config, lowering, dtype, opsets_of(lowering), f"rfa-export {__version__}")
    protos = {}
    enc = {t.name: t for t in meta.encoder.inputs}
    sample = {n: _tensor(n, enc[n].shape, enc[n].dtype) for n in ("input_ids", "attention_mask")}
    axes = {n: _axes(enc[n].shape) for n in sample}
    with progress.step(f"tracing the encoder (--lowering {lowering}, --dtype {dtype})"):
        protos[meta.encoder.file] = export_module(EncoderGraph(model).eval(), sample, [t.name for t in meta.encoder.outputs],
                                                  axes, lowering=lowering, check=False)
    dec = {t.name: t for t in meta.decoder.inputs}
    sample = {n: _tensor(n, dec[n].shape, dec[n].dtype) for n in ("input_ids", "attention_mask")}
    axes = {n: _axes(dec[n].shape) for n in sample}
    sample["past_key_values"] = [_tensor(s.input, s.shape, s.dtype) for s in meta.state]
    axes["past_key_values"] = [_axes(s.shape) for s in meta.state]
    sample["cross_states"] = [_tensor(c.input, c.shape, c.dtype) for c in meta.cross_state]
    axes["cross_states"] = [_axes(c.shape) for c in meta.cross_state]
    names = ["input_ids", "attention_mask"] + [s.input for s in meta.state] + [c.input for c in meta.cross_state]
    if "position_ids" in dec:
        sample["position_ids"] = _tensor("position_ids", dec["position_ids"].shape, "int64")
        axes["position_ids"] = _axes(dec["position_ids"].shape)
        names.append("position_ids")
    out_names = [t.name for t in meta.decoder.outputs] + [s.output for s in meta.state]
    with progress.step("tracing the decoder"):
        decoder = export_module(DecoderGraph(model).eval(), sample, out_names, axes, lowering=lowering,
                                input_names=names, check=False)
    _order_inputs(decoder, [t.name for t in meta.decoder.inputs] + [s.input for s in meta.state]
                  + [c.input for c in meta.cross_state])
    protos[meta.decoder.file] = decoder
    for proto in protos.values():
        proto.doc_string = f"RFA encoder-decoder exported by rfa-export {__version__}; see {METADATA_FILE}"
        proto.producer_name, proto.producer_version = "rfa-export", __version__
    return protos, meta


def write_seq2seq_export(protos: Dict[str, onnx.ModelProto], meta: Seq2SeqExportMetadata, out_dir: Union[str, Path],
                         progress: Progress = SILENT, tokenizer: Union[str, Path, None] = None) -> Path:
    """Both graphs (external data for large weights), sealed together and published in one atomic step."""
    protos = {name: copy.deepcopy(p) for name, p in protos.items()}
    if tokenizer is not None:
        meta.tokenizer = describe_tokenizer(tokenizer, min(meta.model_config.src_vocab_size, meta.vocab_size))
    with staged_export(out_dir) as tmp:
        data_digests = {}
        for name, proto in protos.items():
            if sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD:
                onnx.external_data_helper.convert_model_to_external_data(
                    proto, all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=1024)
                protos[name] = onnx.external_data_helper.write_external_data_tensors(proto, str(tmp))
                data_digests[f"{name}.data"] = file_digest(tmp / f"{name}.data")
        with progress.step("writing encoder_model.onnx and decoder_model.onnx"):
            for name, data in seal_models(protos, meta, data_digests).items():
                (tmp / name).write_bytes(data)
            (tmp / METADATA_FILE).write_text(meta.to_json())
            if tokenizer is not None:
                shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        with progress.step("checking (onnx.checker full_check: structure and strict shape inference)"):
            for name in protos:
                check_exported(None, tmp / name)
    return Path(out_dir)


def export_seq2seq_checkpoint(checkpoint: Union[str, Path], out_dir: Union[str, Path], lowering: str = "plugin",
                              dtype: str = "fp32", progress: Progress = SILENT,
                              tokenizer: Union[str, Path, None] = None) -> Seq2SeqExportMetadata:
    with progress.step(f"loading {checkpoint}"):
        model = load_seq2seq_checkpoint(checkpoint)
    protos, meta = seq2seq_to_onnx(model, lowering, dtype, progress)
    write_seq2seq_export(protos, meta, out_dir, progress, tokenizer)
    return meta


__all__ = ["export_seq2seq_checkpoint", "seq2seq_to_onnx", "write_seq2seq_export"]
