"""What an encoder-decoder export says about itself: two graphs in the layout users know from optimum,
encoder_model.onnx (source -> encoder output and every decoder layer's cross state) and decoder_model.onnx
(one graph for prefill and step: self state in and out, cross states in, never recomputed), their inputs,
outputs and states, the config and the digest of each file. Checked on every read, like the LM's metadata."""

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

from .config import ConfigError, RFASeq2SeqConfig
from .lowerings import LOWERINGS
from .metadata import (DTYPES, MetadataError, StateSpec, TensorSpec, _first_difference, _is_digest, describe_state,
                       parse_metadata_json, validate_tokenizer_entry)

SEQ2SEQ_FORMAT_NAME = "rfa-export/onnx-seq2seq"
SEQ2SEQ_FORMAT_VERSION = 1
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
CROSS_OUT = "present.{}.cross_state"  # an encoder output
CROSS_IN = "encoder.{}.cross_state"  # the decoder input it feeds
CROSS_LAYOUT = ("[S | z] of the layer's cross attention over the real source positions (padding masked out): "
                "S = sum phi(k) v^T in columns 0..Dv-1, z = sum phi(k) in column Dv; one per source, shared by its "
                "decoder rows (beams)")


@dataclass
class GraphSpec:
    file: str
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]


@dataclass
class CrossStateSpec:
    layer: int
    output: str  # of the encoder
    input: str  # of the decoder
    shape: List[Any]
    dtype: str = "float32"
    layout: str = CROSS_LAYOUT


@dataclass
class Seq2SeqExportMetadata:
    lowering: str
    dtype: str
    opsets: Dict[str, int]
    encoder: GraphSpec
    decoder: GraphSpec
    state: List[StateSpec]  # the decoder's self states
    cross_state: List[CrossStateSpec]
    config: Dict[str, Any] = field(default_factory=dict)
    producer: str = ""
    integrity: Dict[str, str] = field(default_factory=dict)  # file name -> sha256 (without metadata_props)
    tokenizer: Dict[str, Any] = field(default_factory=dict)
    format: str = SEQ2SEQ_FORMAT_NAME
    format_version: int = SEQ2SEQ_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "metadata") -> "Seq2SeqExportMetadata":
        def build(data):
            for graph in ("encoder", "decoder"):
                g = data[graph]
                data[graph] = GraphSpec(g["file"], [TensorSpec(**t) for t in g["inputs"]],
                                        [TensorSpec(**t) for t in g["outputs"]])
            data["state"] = [StateSpec(**s) for s in data["state"]]
            data["cross_state"] = [CrossStateSpec(**s) for s in data["cross_state"]]
            return cls(**data)

        return parse_metadata_json(text, source, SEQ2SEQ_FORMAT_NAME, SEQ2SEQ_FORMAT_VERSION,
                                   "rfa-export encoder-decoder metadata", build)

    def validate(self, source: str = "metadata") -> None:
        try:
            config = RFASeq2SeqConfig.from_dict(self.config)
        except ConfigError as e:
            raise MetadataError(f"{source}: {e}") from None
        if self.lowering not in LOWERINGS or self.dtype not in DTYPES or self.opsets != LOWERINGS[self.lowering].opsets:
            raise MetadataError(f"{source}: lowering {self.lowering!r}, dtype {self.dtype!r} and opsets {self.opsets} do "
                                "not make a known export")
        expected = describe_seq2seq_export(config, self.lowering, self.dtype, self.opsets, self.producer)
        for name in ("state", "cross_state"):
            got, want = getattr(self, name), getattr(expected, name)
            if got != want:
                raise MetadataError(f"{source}: {name}{_first_difference(got, want)}")
        for graph in ("encoder", "decoder"):
            got, want = getattr(self, graph), getattr(expected, graph)
            if got != want:
                raise MetadataError(f"{source}: the {graph} graph's description does not match the config")
        if not isinstance(self.integrity, dict) or not all(_is_digest(self.integrity.get(f))
                                                            for f in (ENCODER_FILE, DECODER_FILE)):
            raise MetadataError(f"{source}: no content digest for both graphs")
        validate_tokenizer_entry(self.tokenizer, min(config.src_vocab_size, config.tgt_vocab_size), source)

    @property
    def model_config(self) -> RFASeq2SeqConfig:
        return RFASeq2SeqConfig.from_dict(self.config)

    @property
    def vocab_size(self) -> int:
        return int(self.config["tgt_vocab_size"])

    def differences(self, other: "Seq2SeqExportMetadata") -> List[str]:
        a, b = asdict(self), asdict(other)
        return [k for k in a if a[k] != b.get(k)]


def describe_seq2seq_export(config: RFASeq2SeqConfig, lowering: str, dtype: str, opsets: Dict[str, int],
                            producer: str) -> Seq2SeqExportMetadata:
    """Both graphs' inputs and outputs for a model of this config: the one source of the exporter's names,
    sample inputs and dynamic axes, and of every reader's checks. `batch` counts sources; `decoder_batch`
    decoder rows, a multiple of `batch` with the rows of one source contiguous (its beams)."""
    shape = list(config.cross_state_shape)
    encoder_inputs = [
        TensorSpec("input_ids", ["batch", "encoder_sequence_length"], "int64", "source token ids"),
        TensorSpec("attention_mask", ["batch", "encoder_sequence_length"], "int64",
                   "nonzero for real source tokens, 0 for padding (ignored exactly)"),
    ]
    cross = [CrossStateSpec(i, CROSS_OUT.format(i), CROSS_IN.format(i), ["batch", *shape])
             for i in range(config.n_decoder_layers)]
    encoder_outputs = [TensorSpec("last_hidden_state", ["batch", "encoder_sequence_length", config.d_model], "float32",
                                  "the encoder's output (not needed for decoding: the cross states summarise it)")]
    encoder_outputs += [TensorSpec(c.output, c.shape, "float32", f"layer {c.layer}'s cross state") for c in cross]
    decoder_inputs = [
        TensorSpec("input_ids", ["decoder_batch", "sequence"], "int64", "target token ids"),
        TensorSpec("attention_mask", ["decoder_batch", "total_sequence_length"], "int64",
                   "nonzero for real tokens, 0 for padding (the self state is left unchanged there); only the last "
                   "`sequence` columns are read"),
    ]
    if config.positional != "none":
        decoder_inputs.append(TensorSpec("position_ids", ["decoder_batch", "sequence"], "int64",
                                         "absolute position of each target token"))
    decoder_outputs = [TensorSpec("logits", ["decoder_batch", "sequence", config.tgt_vocab_size], "float32",
                                  "next-token logits")]
    state = describe_state(config, config.n_decoder_layers, "decoder_batch")
    return Seq2SeqExportMetadata(
        lowering=lowering, dtype=dtype, opsets=dict(opsets),
        encoder=GraphSpec(ENCODER_FILE, encoder_inputs, encoder_outputs),
        decoder=GraphSpec(DECODER_FILE, decoder_inputs, decoder_outputs),
        state=state, cross_state=cross, config=config.to_dict(), producer=producer)
