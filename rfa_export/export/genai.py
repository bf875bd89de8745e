"""What onnxruntime-genai needs from a state-only decoder (docs/genai.md): the conv_state shim and
genai_config.json."""

import onnx

from ..format.metadata import GENAI_CONV_IN, GENAI_CONV_OUT, MODEL_FILE, ExportMetadata, describe_export


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


def genai_config(meta: ExportMetadata, context_length: int = 65536, eos_token_id: int = None, pad_token_id: int = 0) -> dict:
    """genai_config.json for an export with the shim. Byte-level models use 0 (NUL) as end and padding: it
    never occurs in text, and genai pads ragged batches on the right with pad_token_id. A model with a
    tokenizer.json ends on its end-of-text token where it has one."""
    if eos_token_id is None:
        eos_token_id = meta.tokenizer.get("eos_token_id") or 0
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


def genai_tokenizer_config() -> dict:
    """tokenizer_config.json, which onnxruntime-genai reads beside a tokenizer.json."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
