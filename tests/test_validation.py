"""Every row of docs/validation.md has a case here (checked against the document), and property tests feed
random configs and random runtime inputs: a clear error or a finite result, never NaN, a crash or a hang."""

import io
import json
import math
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import time_limit
from rfa_export.cli import main
from rfa_export.format.config import ConfigError, RFAConfig, RFASeq2SeqConfig
from rfa_export.format.export_dir import open_export
from rfa_export.format.metadata import MetadataError
from rfa_export.model import RFALanguageModel
from rfa_export.model.checkpoint import CheckpointError, load_checkpoint, load_seq2seq_checkpoint, save_checkpoint
from rfa_export.runtime import (ContinuousBatch, Decoder, InputError, OnnxRuntimeBackend, SamplingParams, TorchBackend,
                                open_backend, restore, snapshot)
from rfa_export.runtime.backend import NonFiniteError
from rfa_export.runtime.decoder import DecodeState

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = str(ROOT / "examples" / "tiny_rfa.pt")
SMALL = dict(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)
CLEAR_ERRORS = (InputError, NonFiniteError, ConfigError, MetadataError, CheckpointError)
PROPERTY = settings(max_examples=int(__import__("os").environ.get("RFA_PROPERTY_EXAMPLES", 60)), deadline=None, derandomize=not __import__("os").environ.get("RFA_PROPERTY_SEARCH"), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def decoders(bundled_export):
    return {"torch": Decoder(TorchBackend(BUNDLED)), "onnxruntime": Decoder(OnnxRuntimeBackend(bundled_export))}


def raises(exc, message, call):
    with pytest.raises(exc, match=message):
        call()


# --- one case (or more) per row -----------------------------------------------------------------------------------


def config_cases():
    def bad(message, **kw):
        return lambda: raises(ConfigError, message, lambda: RFAConfig(**{**SMALL, **kw}))

    return {
        "C1": [bad(r"vocab_size must be an integer in \[1, 2147483647\], got 0", vocab_size=0),
               bad(r"vocab_size must be an integer in \[1, 2147483647\], got 2147483648", vocab_size=2**31)],
        "C2": [bad(r"d_model must be an integer in \[1, 65536\], got 65537", d_model=65537, n_heads=1)],
        "C3": [bad(r"n_heads must be an integer in \[1, 65536\], got -2", n_heads=-2),
               bad(r"d_model \(32\) must be a multiple of n_heads \(3\)", n_heads=3)],
        "C4": [bad(r"n_layers must be an integer in \[1, 1024\], got 1025", n_layers=1025)],
        "C5": [bad(r"d_ffn must be an integer in \[1, 262144\], got 0", d_ffn=0)],
        "C6": [bad(r"num_features must be an integer in \[1, 4096\], got 4097", num_features=4097)],
        "C7": [bad(r"dropout must be a finite number in \[0.0, 1.0\), got 1.0", dropout=1.0),
               bad(r"dropout must be a finite number in \[0.0, 1.0\), got nan", dropout=math.nan)],
        "C8": [bad(r"normaliser_eps must be a finite number in \[1e-06, 1.0\], got inf", normaliser_eps=math.inf),
               bad(r"normaliser_eps must be a finite number in \[1e-06, 1.0\], got 1e-09", normaliser_eps=1e-9)],
        "C9": [bad(r"layer_norm_eps must be a finite number in \[1e-12, 1.0\], got nan", layer_norm_eps=math.nan),
               bad(r"layer_norm_eps must be a finite number in \[1e-12, 1.0\], got -1e-05", layer_norm_eps=-1e-5)],
        "C10": [bad(r"feature_map must be one of gaussian, arccos, got 'softmax'", feature_map="softmax")],
        "C11": [bad(r"positional must be one of sinusoidal, none, got 'rope'", positional="rope"),
                bad(r"positional 'sinusoidal' needs d_model >= 2 \(a sin/cos pair\), got 1", positional="sinusoidal",
                    d_model=1, n_heads=1)],
        "C12": [bad(r"config field n_layers must be int, got bool True", n_layers=True),
                bad(r"config field d_model must be int, got str '32'", d_model="32"),
                bad(r"config field gated must be bool, got int 1", gated=1)],
        "C13": [lambda: raises(ConfigError, "config has unknown fields: colour",
                               lambda: RFAConfig.from_dict({**SMALL, "colour": "red"})),
                lambda: raises(ConfigError, "config keys must be strings", lambda: RFAConfig.from_dict({1: 2}))],
        "C15": [lambda: raises(ConfigError, r"n_encoder_layers must be an integer in \[1, 1024\], got 0",
                               lambda: RFASeq2SeqConfig(n_encoder_layers=0)),
                lambda: raises(ConfigError, r"tgt_vocab_size must be an integer in \[1, 2147483647\], got 0",
                               lambda: RFASeq2SeqConfig(tgt_vocab_size=0, shared_vocab=False)),
                lambda: raises(ConfigError, r"layer_norm_eps must be a finite number in \[1e-12, 1.0\], got nan",
                               lambda: RFASeq2SeqConfig(layer_norm_eps=math.nan))],
        "C16": [lambda: raises(ConfigError, r"eos_token_id must be an integer in \[0, 258\), got 258",
                               lambda: RFASeq2SeqConfig(eos_token_id=258)),
                lambda: raises(ConfigError, "bos_token_id and eos_token_id must differ",
                               lambda: RFASeq2SeqConfig(bos_token_id=5, eos_token_id=5))],
        "C17": [lambda: raises(ConfigError, "shared_vocab needs src_vocab_size == tgt_vocab_size",
                               lambda: RFASeq2SeqConfig(src_vocab_size=256))],
        "C18": [lambda: raises(ConfigError, r"max_source_length must be an integer in \[1, 1048576\], got 0",
                               lambda: RFASeq2SeqConfig(max_source_length=0))],
        "C19": [bad(r"state_dtype must be one of float32, bfloat16, int8, got 'float16'", state_dtype="float16"),
                bad(r"state_dtype 'bfloat16' needs a gated model", state_dtype="bfloat16", gated=False)],
        "C14": [bad(r"embed.weight of shape \(2147483647, 2\).* more than 2,147,483,647", vocab_size=2**31 - 1, d_model=2,
                    n_heads=1),
                bad(r"attention projections of shape \(65536, 65536\)", d_model=65536, n_heads=1024)],
    }


def checkpoint_cases(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(RFALanguageModel(RFAConfig(**SMALL)), good)
    payload = torch.load(good, weights_only=True)

    def file_with(path_name, mutate):
        p = dict(payload, config=dict(payload["config"]), state_dict=dict(payload["state_dict"]))
        mutate(p)
        path = tmp_path / path_name
        torch.save(p, path)
        return path

    def bad(message, path):
        return lambda: raises(CheckpointError, message, lambda: load_checkpoint(path))

    (tmp_path / "text.pt").write_text("hello")
    return {
        "K1": [bad("no such file", tmp_path / "absent.pt"), bad("not a (readable )?torch checkpoint", tmp_path / "text.pt")],
        "K2": [bad("refused", _pickle_file(tmp_path))],
        "K3": [bad("missing keys: config", file_with("k3.pt", lambda p: p.pop("config"))),
               bad("format_version 7 is not supported", file_with("k3b.pt", lambda p: p.update(format_version=7)))],
        "K4": [bad("missing blocks.1.attn.gate.bias, .* and 16 more", file_with("k4.pt", lambda p: p["config"].update(n_layers=2))),
               bad("bad config: config field layer_norm_eps", file_with("k4b.pt", lambda p: p["config"].update(layer_norm_eps=0.0)))],
        "K5": [bad(r"ln_f.bias has shape \(3,\), the config implies \(32,\)",
                   file_with("k5.pt", lambda p: p["state_dict"].update({"ln_f.bias": torch.zeros(3)})))],
        "K6": [bad("ln_f.bias contains NaN", file_with("k6.pt", lambda p: p["state_dict"].update({"ln_f.bias": torch.full((32,), math.inf)}))),
               bad("expected a floating-point tensor",
                   file_with("k6b.pt", lambda p: p["state_dict"].update({"ln_f.bias": torch.zeros(32, dtype=torch.int32)})))],
    }


def _pickle_file(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"config": Evil()}, protocol=2))
    return path


def export_cases(tmp_path):
    from rfa_export.export import language_model_to_onnx

    nan_model = RFALanguageModel(RFAConfig(**SMALL))
    with torch.no_grad():
        nan_model.ln_f.weight[0] = math.nan
    tiny_eps = RFALanguageModel(RFAConfig(**SMALL, normaliser_eps=1e-5))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")

    def cli_one_line(message, *argv):
        def run():
            code = main(list(argv))
            assert code == 1

        return lambda: _one_line_error(run, message)

    return {
        "E1": [lambda: raises(ValueError, "weight ln_f.weight contains NaN or infinity", lambda: language_model_to_onnx(nan_model))],
        "E2": [lambda: raises(ValueError, r"bounds outputs by 100000, beyond float16's 65504",
                              lambda: language_model_to_onnx(tiny_eps, dtype="fp16"))],
        "E3": [cli_one_line("exists and is not a directory", BUNDLED, "-o", str(blocker))],
    }


_CAPSYS = {}


def _one_line_error(run, message):
    capsys = _CAPSYS["capsys"]
    capsys.readouterr()
    run()
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and message in err, err


def directory_cases(bundled_export, tmp_path):
    """Each case copies the export when it runs (the copies are made only for the row under test)."""
    counter = iter(range(10**6))

    def copy():
        d = tmp_path / f"export{next(counter)}"
        shutil.copytree(bundled_export, d)
        return d

    def edited_json(edit):
        def make():
            d = copy()
            meta = json.loads((d / "rfa_export.json").read_text())
            edit(meta)
            (d / "rfa_export.json").write_text(json.dumps(meta))
            return d
        return make

    def replaced(name, content):
        def make():
            d = copy()
            if content is None:
                (d / name).unlink()
            else:
                (d / name).write_bytes(content)
            return d
        return make

    def bad(message, make):
        return lambda: raises(MetadataError, message, lambda: open_export(make()))

    return {
        "M1": [bad("no rfa_export.json", replaced("rfa_export.json", None)),
               bad("unreadable", replaced("rfa_export.json", b"\xff\xfe{}")),
               bad("format 1, no content digest", edited_json(lambda m: m.update(format_version=1))),
               bad("not rfa-export metadata", edited_json(lambda m: m.update(format="other"))),
               lambda: _seq2seq_header_case()],
        "M2": [bad(r"config field n_layers must be an integer in \[1, 1024\], got 0",
                   edited_json(lambda m: m["config"].update(n_layers=0))),
               bad("unknown lowering 'magic'", edited_json(lambda m: m.update(lowering="magic"))),
               bad(r"state\[1\].output is 'x', the config implies 'present.1.recurrent_state'",
                   edited_json(lambda m: m["state"][1].update(output="x"))),
               bad("opsets .* are not those of lowering 'plugin'", edited_json(lambda m: m["opsets"].update(rfa=2)))],
        "M3": [bad("not a valid ONNX model", replaced("model.onnx", b"\x0f" * 100))],
        "M4": [bad(r"differs from the metadata inside model.onnx \(producer\)",
                   edited_json(lambda m: m.update(producer="someone else")))],
        "M5": [bad("model.onnx: modified after export", lambda: _edited_weight(copy())),
               lambda: _data_file_case(tmp_path / "external")],
        "M6": [lambda: _verify_dtype_case(copy())],
        "M7": [bad(r"tokenizer must name tokenizer.json, its sha256, a vocab_size in \[1, 256\]",
                   edited_json(lambda m: m.update(tokenizer=entry))) for entry in _bad_tokenizer_entries(256)]
        + [lambda: _seq2seq_tokenizer_case()],
    }


def _bad_tokenizer_entries(vocab_size):
    good = {"file": "tokenizer.json", "sha256": "0" * 64, "vocab_size": vocab_size, "eos_token_id": 0}
    return [{**good, "file": "../tokenizer.json"}, {**good, "sha256": "x"}, {**good, "vocab_size": vocab_size + 1},
            {**good, "vocab_size": True}, {**good, "eos_token_id": vocab_size}, {k: v for k, v in good.items() if k != "file"}]


def _seq2seq_meta(**fields):
    from rfa_export.format.lowerings import LOWERINGS
    from rfa_export.format.seq2seq_metadata import DECODER_FILE, ENCODER_FILE, describe_seq2seq_export

    config = RFASeq2SeqConfig(**fields)
    meta = describe_seq2seq_export(config, "plugin", "fp32", LOWERINGS["plugin"].opsets, "test")
    meta.integrity = {ENCODER_FILE: "0" * 64, DECODER_FILE: "1" * 64}
    return meta


def _seq2seq_header_case():
    """The encoder-decoder metadata's JSON is refused for another format, another version or a missing field."""
    from rfa_export.format.seq2seq_metadata import Seq2SeqExportMetadata

    good = json.loads(_seq2seq_meta().to_json())
    assert Seq2SeqExportMetadata.from_json(json.dumps(good)).cross_state[0].input == "encoder.0.cross_state"
    for edit, message in [(lambda m: m.update(format="rfa-export/onnx"), "not rfa-export encoder-decoder metadata"),
                          (lambda m: m.update(format_version=2), "metadata format_version 2 is not 1"),
                          (lambda m: m.pop("cross_state"), r"malformed rfa-export metadata \('cross_state'\)"),
                          (lambda m: m["encoder"].update(inputs=[{"nam": 1}]), "malformed rfa-export metadata")]:
        data = json.loads(json.dumps(good))
        edit(data)
        raises(MetadataError, message, lambda: Seq2SeqExportMetadata.from_json(json.dumps(data)))


def _seq2seq_tokenizer_case():
    """The encoder-decoder metadata takes the same entries: a valid one is read back, the bad ones are refused
    against the smaller vocabulary (source 300, target 200)."""
    from rfa_export.format.seq2seq_metadata import Seq2SeqExportMetadata

    meta = _seq2seq_meta(src_vocab_size=300, tgt_vocab_size=200, shared_vocab=False, bos_token_id=198, eos_token_id=199)
    meta.tokenizer = {"file": "tokenizer.json", "sha256": "2" * 64, "vocab_size": 200, "eos_token_id": None}
    assert Seq2SeqExportMetadata.from_json(meta.to_json()).tokenizer == meta.tokenizer
    for entry in _bad_tokenizer_entries(200):
        meta.tokenizer = entry
        raises(MetadataError, r"tokenizer must name tokenizer.json, its sha256, a vocab_size in \[1, 200\]",
               lambda: Seq2SeqExportMetadata.from_json(meta.to_json()))


def _edited_weight(d):
    model = onnx.load(str(d / "model.onnx"))
    init = model.graph.initializer[0]
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) + 1e-3, init.name))
    onnx.save(model, str(d / "model.onnx"))
    return d


def _data_file_case(d):
    import rfa_export.export.writing as lm_export
    from rfa_export.export import export_checkpoint

    threshold = lm_export.EXTERNAL_DATA_THRESHOLD
    lm_export.EXTERNAL_DATA_THRESHOLD = 1000
    try:
        path = d.parent / "small.pt"
        save_checkpoint(RFALanguageModel(RFAConfig(**SMALL)), path)
        export_checkpoint(path, d)
    finally:
        lm_export.EXTERNAL_DATA_THRESHOLD = threshold
    open_export(d)
    data = bytearray((d / "model.onnx.data").read_bytes())
    data[100] ^= 1
    (d / "model.onnx.data").write_bytes(bytes(data))
    raises(MetadataError, "model.onnx.data: modified after export", lambda: open_export(d))


def _verify_dtype_case(d):
    from rfa_export.format.metadata import metadata_from_model
    from rfa_export.format.model_file import seal_model
    from rfa_export.tools.verify import VerifyError, verify_export

    model = onnx.load(str(d / "model.onnx"))
    meta = metadata_from_model(model)
    meta.dtype = "fp16"
    (d / "model.onnx").write_bytes(seal_model(model, meta))
    (d / "rfa_export.json").write_text(meta.to_json())
    raises(VerifyError, "the metadata says fp16 but the graph's weights are fp32",
           lambda: verify_export(d, BUNDLED, lengths=[2], decode_steps=0))


def runtime_cases(dec):
    state, logits = dec.prefill(["ab", "cd"])
    host = dec.backend.to_host(state.state)
    run = dec.backend.run
    zeros = dec.backend.zeros_state
    nan = [a.copy() for a in host]
    nan[0][0, 0, 0, 0] = math.nan
    blob = snapshot(dec, state, logits)
    other = Decoder(TorchBackend(RFALanguageModel(RFAConfig(**SMALL))))

    def bad(message, call, exc=InputError):
        return lambda: raises(exc, message, call)

    return {
        "R1": [bad(r"prompt 0: token id 256 is out of range \[0, 256\)", lambda: dec.prefill([[1, 256]])),
               bad("prompt 0: token ids must be integers, got float64", lambda: dec.prefill([[1.5]])),
               bad("token ids must be integers, got bool", lambda: dec.step([True, False], state)),
               bad(r"stop_tokens: token id -3 is out of range", lambda: dec.generate(["a"], 2, stop_tokens=[-3])),
               bad(r"input_ids: token id 999 is out of range", lambda: run(np.array([[999]]), np.ones((1, 1)), None, zeros(1)))],
        "R2": [bad("prompt 0 is empty", lambda: dec.prefill([""])),
               bad("prompts must be a list", lambda: dec.prefill("abc")),
               bad("prompts must be a list", lambda: dec.generate("abc", 2)),
               bad("prompt 0 is bytes", lambda: dec.prefill([b"abc"])),
               bad("text is not valid Unicode", lambda: dec.prefill(["a\ud800b"])),
               bad(r"prompt 0 must be one list of token ids, got shape \[2, 2\]", lambda: dec.prefill([[[1, 2], [3, 4]]]))],
        "R3": [bad("attention_mask must be integers", lambda: run(np.ones((1, 2), np.int64), np.ones((1, 1)), None, zeros(1))),
               bad("attention_mask must be integers", lambda: run(np.ones((1, 2), np.int64), np.ones((1, 2), np.float32), None, zeros(1))),
               bad(r"input_ids must be \[batch, sequence\]", lambda: run(np.ones(3, np.int64), np.ones(3, np.int64), None, zeros(1)))],
        "R4": [bad(r"state past_key_values.0.recurrent_state has shape \[2, 4, 64, 32\]",
                   lambda: dec.step([1, 2], DecodeState(dec.backend.from_host([a[..., :32] for a in host]), state.positions))),
               bad("with batch 1", lambda: run(np.ones((1, 1), np.int64), np.ones((1, 1), np.int64), None, zeros(2))),
               bad("state has 2 tensors", lambda: dec.step([1, 2], DecodeState(dec.backend.from_host(host[:2]), state.positions))),
               bad("state must be a DecodeState", lambda: dec.step([1, 2], host))],
        "R5": [bad("state past_key_values.0.recurrent_state contains NaN or infinity",
                   lambda: dec.state_from_arrays(nan, state.positions))],
        "R6": [bad("positions must lie in", lambda: dec.state_from_arrays(host, [-1, 0])),
               bad("positions must be a non-empty list of integers", lambda: dec.state_from_arrays(host, [0.5, 1.0])),
               bad("positions would pass 2147483647",
                   lambda: dec.step([1, 2], DecodeState(state.state, np.array([2**31 - 1, 0]))))],
        "R7": [bad(r"max_new_tokens must be an integer in \[1, 2147483647\], got 0", lambda: dec.generate(["a"], 0)),
               bad(r"max_new_tokens must be an integer in \[1, 2147483647\], got 2.0", lambda: dec.generate(["a"], 2.0)),
               bad(r"max_new_tokens must be an integer", lambda: dec.generate(["a"], 2**31))],
        "R8": [bad(r"temperature must be a finite number in \[0, 10000\], got nan", lambda: SamplingParams(math.nan)),
               bad(r"temperature must be a finite number in \[0, 10000\], got -0.5", lambda: SamplingParams(-0.5)),
               bad(r"top_k must be an integer in \[0, 2147483647\], got -1", lambda: SamplingParams(1.0, top_k=-1)),
               bad(r"top_p must be a finite number in \(0, 1\], got nan", lambda: SamplingParams(1.0, top_p=math.nan)),
               bad(r"seed must be an integer in \[0, 9223372036854775807\], got -4", lambda: SamplingParams(1.0, seed=-4)),
               bad("seed must be an integer", lambda: dec.generate(["a"], 2, SamplingParams(1.0), seeds=[1.5])),
               bad("seeds must be a list of 2 integers, one per prompt", lambda: dec.generate(["a", "b"], 2, SamplingParams(1.0), seeds=[1])),
               bad("sampling must be a SamplingParams", lambda: dec.generate(["a"], 2, {"temperature": 1.0}))],
        "R9": [bad(r"num_beams must be an integer in \[1, 256\], got 257", lambda: dec.beam_search("a", 257, 2)),
               bad("length_penalty must be a finite number, got nan", lambda: dec.beam_search("a", 2, 2, math.nan))],
        "R10": [bad("not a state snapshot", lambda: restore(dec, b"garbage")),
                bad("does not match its digest", lambda: restore(dec, _with_array(blob, "positions", np.array([3, 3])))),
                bad(r"different model: config d_ffn is 512 here, 32 in the snapshot", lambda: restore(dec, snapshot(other, other.new_state(1)))),
                bad("member header.npy is compressed", lambda: restore(dec, _recompressed(blob))),
                bad(r"snapshot array state_1 is float32 \[2, 4, 64, 99\]", lambda: restore(dec, _with_array(blob, "state_1", np.zeros((2, 4, 64, 99), np.float32))))],
        "R11": [lambda: _nan_logits_case(dec, state)],
        "R12": [bad(r"prefill_chunk must be an integer in \[1, ", lambda: Decoder(dec.backend, prefill_chunk=0)),
                bad(r"batch must be an integer in \[1, ", lambda: dec.new_state(0)),
                bad(r"rows must be integers in \[0, 2\)", lambda: dec.select(state, [2]))],
        "R13": [lambda: _torch_nan_model_case()],
        "R15": [lambda: _seq2seq_case(lambda d: d.start(["1", ""]), "source 1 is empty"),
                lambda: _seq2seq_case(lambda d: d.start([[1] * 65]), "more than the model's max_source_length 64"),
                lambda: _seq2seq_case(lambda d: d.start([[1.5]]), "source 0: token ids must be integers, got float64")],
        "R16": [lambda: _seq2seq_case(lambda d: d.start([[1]], [[256, 999]]), r"prefix 0: token id 999 is out of range"),
                lambda: _seq2seq_case(lambda d: d.start([[1]], [[]]), "a target prefix is empty"),
                lambda: _seq2seq_case(lambda d: d.step([5, 6], d.start([[1]])[0]), "2 tokens for 1 decoder rows")],
        "R17": [lambda: raises(CheckpointError, "an encoder-decoder checkpoint; this takes a language-model one",
                               lambda: load_checkpoint(_seq2seq_checkpoint())),
                lambda: raises(CheckpointError, "a language-model checkpoint; this takes an encoder-decoder one",
                               lambda: load_seq2seq_checkpoint(BUNDLED))],
        "R18": [lambda: raises(InputError, "device 'mps': the torch backends run on cpu or cuda",
                               lambda: TorchBackend(BUNDLED, device="mps")),
                lambda: raises(InputError, r"device 'cuda:99': (this torch .* is a build without CUDA|torch sees \d+ CUDA)",
                               lambda: TorchBackend(BUNDLED, device="cuda:99"))],
        "R19": [bad("unknown backend 'magic'; choose one of onnxruntime, torch, tensorrt", lambda: open_backend("magic", "out"),
                    ValueError),
                bad(r"the torch backend takes no option threads \(it takes dtype, tokenizer, cuda_graph\)",
                    lambda: open_backend("torch", checkpoint=BUNDLED, threads=1), ValueError),
                bad("the torch backend runs a checkpoint", lambda: open_backend("torch", ROOT / "examples"), ValueError),
                bad("the onnxruntime backend runs an export, which carries its own weights",
                    lambda: open_backend("onnxruntime", "out", checkpoint=BUNDLED), ValueError),
                bad(r"the tensorrt backend runs on cuda \(pick the GPU with device_id\), not 'cpu'",
                    lambda: open_backend("tensorrt", "out", device="cpu"), ValueError)],
        "R14": [bad("stop_strings must be a list of strings", lambda: dec.generate(["a"], 2, stop_strings="abc")),
                bad("stop_strings must be a list of strings", lambda: dec.generate(["a"], 2, stop_strings=[3]))],
    }


def _recompressed(blob):
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


def _with_array(blob, name, array):
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for member in src.namelist():
            if member == name + ".npy":
                buf = io.BytesIO()
                np.save(buf, array)
                dst.writestr(member, buf.getvalue())
            else:
                dst.writestr(member, src.read(member))
    return out.getvalue()


class NanLogits:
    """A backend whose logits come out NaN (as a NaN weight or state would make them)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, *args):
        logits, state = self.inner.run(*args)
        return np.full_like(logits, math.nan), state


def _nan_logits_case(dec, state):
    batch = ContinuousBatch(dec)
    rid = batch.add("abc", 3)
    batch.logits[0, 7] = math.inf
    (event,) = batch.step()
    assert event.finished == "error" and event.token is None
    assert f"request {rid}: logits contain NaN or infinity" in event.error
    nan = Decoder(NanLogits(dec.backend))
    raises(NonFiniteError, "request 0: logits contain NaN or infinity", lambda: nan.generate(["a", "b"], 2))
    raises(NonFiniteError, "beam search: logits contain NaN or infinity", lambda: nan.beam_search("a", 2, 2))


_SEQ2SEQ = {}


def _seq2seq_checkpoint():
    if "path" not in _SEQ2SEQ:
        import tempfile

        from rfa_export.model.checkpoint import save_seq2seq_checkpoint
        from rfa_export.model.seq2seq import RFASeq2Seq

        torch.manual_seed(0)
        model = RFASeq2Seq(RFASeq2SeqConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ffn=16,
                                            num_features=4, max_source_length=64))
        _SEQ2SEQ["path"] = Path(tempfile.mkdtemp()) / "s2s.pt"
        save_seq2seq_checkpoint(model, _SEQ2SEQ["path"])
    return _SEQ2SEQ["path"]


def _seq2seq_case(call, message):
    from rfa_export.runtime.seq2seq import Seq2SeqDecoder, TorchSeq2SeqBackend

    raises(InputError, message, lambda: call(Seq2SeqDecoder(TorchSeq2SeqBackend(_seq2seq_checkpoint()))))


def _torch_nan_model_case():
    model = RFALanguageModel(RFAConfig(**SMALL))
    with torch.no_grad():
        model.embed.weight[0, 0] = math.nan
    raises(InputError, "weight embed.weight contains NaN or infinity", lambda: TorchBackend(model))


def all_cases(request, tmp_path, decoder):
    bundled = request.getfixturevalue("bundled_export")
    cases = {**config_cases(), **checkpoint_cases(tmp_path), **export_cases(tmp_path),
             **directory_cases(bundled, tmp_path), **runtime_cases(decoder)}
    return cases


def documented_ids():
    text = (ROOT / "docs" / "validation.md").read_text()
    return re.findall(r"^\| ([A-Z]\d+) \|", text, flags=re.M)


def test_every_documented_check_has_a_case(request, tmp_path, decoders):
    ids = documented_ids()
    assert len(ids) == len(set(ids)), "duplicate ids in docs/validation.md"
    assert set(all_cases(request, tmp_path, decoders["torch"])) == set(ids)


@pytest.mark.parametrize("row, backend", [(r, "torch") for r in documented_ids()]
                         + [(r, "onnxruntime") for r in documented_ids() if r.startswith("R")])
def test_documented_check(request, tmp_path, decoders, capsys, row, backend):
    """The runtime rows on both backends; the others do not depend on one."""
    _CAPSYS["capsys"] = capsys
    cases = all_cases(request, tmp_path, decoders[backend])[row]
    with time_limit(60):
        for case in cases:
            case()


# --- property tests -------------------------------------------------------------------------------------------------

ANY_NUMBER = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.text(max_size=3), st.none(), st.integers(2**31 - 2, 2**70))


def _maybe(valid, junk=ANY_NUMBER):
    """Mostly valid values, sometimes junk."""
    return st.one_of(*([valid] * 5), junk)


VALID_CONFIGS = st.fixed_dictionaries({
    "vocab_size": st.integers(1, 300),
    "d_model": st.sampled_from([1, 2, 4, 6, 8, 16, 24]),
    "n_heads": st.sampled_from([1, 2, 3, 4]),
    "n_layers": st.integers(1, 3),
    "d_ffn": st.integers(1, 48),
    "feature_map": st.sampled_from(["gaussian", "arccos"]),
    "num_features": st.integers(1, 16),
    "orthogonal_features": st.booleans(),
    "gated": st.booleans(),
    "positional": st.sampled_from(["sinusoidal", "none"]),
    "tie_embeddings": st.booleans(),
    "dropout": st.floats(0, 0.99),
    "normaliser_eps": st.one_of(st.sampled_from([1e-6, 1e-3, 1.0]), st.floats(1e-6, 1.0)),
    "layer_norm_eps": st.one_of(st.sampled_from([1e-12, 1e-5, 1.0]), st.floats(1e-12, 1.0)),
})
# half the examples valid (up to d_model % n_heads), half with one field replaced by junk
CONFIGS = st.one_of(VALID_CONFIGS, st.tuples(VALID_CONFIGS, st.sampled_from(sorted(RFAConfig.__dataclass_fields__)),
                                             st.one_of(ANY_NUMBER, st.text(max_size=8)))
                    .map(lambda t: {**t[0], t[1]: t[2]}))


@PROPERTY
@given(config=CONFIGS, seed=st.integers(0, 2**16), length=st.integers(1, 40))
def test_random_configs_give_a_clear_error_or_a_finite_model(config, seed, length):
    """A clear error for a bad config; otherwise the model's prefill and steps are finite, in bounded time."""
    with time_limit(30):
        try:
            cfg = RFAConfig.from_dict(config)
        except ConfigError as e:
            assert str(e).startswith("config ") and "\n" not in str(e)
            event("refused")
            return
        event("built")
        torch.manual_seed(seed)
        model = RFALanguageModel(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (2, length))
        with torch.no_grad():
            logits, state = model(ids)
            step_logits, state = model.step(ids[:, -1], state, torch.full((2,), length))
        assert torch.isfinite(logits).all() and torch.isfinite(step_logits).all()
        assert all(torch.isfinite(s).all() for s in state)


# each argument: (valid values, junk); an example has all arguments valid, or exactly one junk
RUNTIME_ARGUMENTS = {
    "prompt": (st.one_of(st.lists(st.integers(0, 255), min_size=1, max_size=8), st.text(min_size=1, max_size=8)),
               st.one_of(st.lists(st.integers(-5, 300), max_size=6), st.lists(st.floats(allow_nan=True), min_size=1, max_size=3),
                         st.just(""), st.just([]), st.binary(max_size=3), ANY_NUMBER)),
    "max_new": (st.one_of(st.integers(1, 4), st.integers(2**31 - 100, 2**31 - 1)), ANY_NUMBER),
    "temperature": (st.sampled_from([0.0, 0.7, 1e-9, 1e-300, 1e4]), ANY_NUMBER),
    "top_k": (st.integers(0, 300), ANY_NUMBER),
    "top_p": (st.sampled_from([1.0, 0.5, 1e-9]), ANY_NUMBER),
    "seed": (st.integers(0, 2**63 - 1) | st.none(), ANY_NUMBER),
    "stop_tokens": (st.lists(st.integers(0, 255), max_size=2),
                    st.one_of(st.lists(st.integers(-2, 300), min_size=1, max_size=2), st.lists(st.floats(), min_size=1, max_size=1))),
    "stop_strings": (st.lists(st.text(max_size=2), max_size=2), st.one_of(st.text(min_size=1, max_size=2), st.lists(ANY_NUMBER, min_size=1))),
}


@PROPERTY
@given(data=st.data(), junk=st.sampled_from([None, None, None, *RUNTIME_ARGUMENTS]), backend=st.sampled_from(["torch", "onnxruntime"]))
def test_random_runtime_inputs_give_a_clear_error_or_finite_tokens(decoders, data, junk, backend):
    """Whatever a caller passes: a clear error, or tokens in range with finite logits, in bounded time (a
    valid but huge max_new_tokens is stepped 3 times, not run to the end)."""
    args = {name: data.draw(pair[1] if name == junk else pair[0], label=name) for name, pair in RUNTIME_ARGUMENTS.items()}
    prompt, max_new, temperature, top_k, top_p, seed, stop_tokens, stop_strings = args.values()
    dec = decoders[backend]
    with time_limit(30):
        try:
            sampling = SamplingParams(temperature, top_k, top_p, seed)
            batch = ContinuousBatch(dec)
            rid = batch.add(prompt, max_new, sampling, stop_tokens, stop_strings)
        except CLEAR_ERRORS as e:
            assert "\n" not in str(e) and str(e)
            assert junk is not None, f"valid arguments refused: {e}"
            event(f"refused: {type(e).__name__}")
            return
        event("decoded")
        for _ in range(3):
            assert np.isfinite(batch.logits).all()
            for ev in batch.step():
                assert ev.finished != "error" and 0 <= ev.token < 256 and isinstance(ev.text, str)
            if not batch.active:
                break
        result = batch.results.get(rid) or batch.requests[rid].result
        assert all(0 <= t < 256 for t in result.tokens)


CORRUPTIONS = ["none"] * 4 + ["float", "bool", "negative", "too_large", "nan", "flat", "wrong_batch", "short"]


def _array(kind: str, shape, high: int) -> np.ndarray:
    """A valid integer array of `shape` in [0, high), or one corrupted as `kind` says."""
    a = np.random.default_rng(len(kind) * 7 + sum(shape)).integers(0, high, shape)
    return {"none": a, "float": a.astype(np.float64) + 0.5, "bool": a.astype(bool), "negative": a - high,
            "too_large": a + high, "nan": np.full(shape, math.nan), "flat": a.reshape(-1),
            "wrong_batch": a[:0] if shape[0] == 1 else a[:1], "short": a[:, :0]}[kind]


@PROPERTY
@given(batch=st.integers(1, 3), length=st.integers(1, 5), ids=st.sampled_from(CORRUPTIONS),
       mask=st.sampled_from(CORRUPTIONS), state_edit=st.sampled_from(["none"] * 4 + ["nan", "drop", "float64", "shape", "batch"]),
       backend=st.sampled_from(["torch", "onnxruntime"]))
def test_random_backend_inputs_give_a_clear_error_or_finite_logits(decoders, batch, length, ids, mask, state_edit, backend):
    be = decoders[backend].backend
    host = [np.zeros([batch, *s.shape[1:]], np.float32) for s in be.spec.state]
    if state_edit == "nan":
        host[0][...] = math.nan
    elif state_edit == "drop":
        host = host[1:]
    elif state_edit == "shape":
        host = [a[..., :-1] for a in host]
    elif state_edit == "batch":
        host = [np.concatenate([a, a]) for a in host]
    state = be.from_host(host) if state_edit != "float64" else [a.astype(np.float64) for a in host]
    if state_edit == "float64" and backend == "torch":
        state = [torch.from_numpy(a) for a in state]
    input_ids = _array(ids, (batch, length), 256)
    with time_limit(30):
        try:
            logits, new = be.run(input_ids, _array(mask, (batch, length), 2), None, state)
        except CLEAR_ERRORS as e:
            assert "\n" not in str(e) and str(e)
            event(f"refused: {type(e).__name__}")
            return
        event("ran")
    assert logits.shape[:2] == np.shape(input_ids)
    if state_edit == "nan":
        assert not np.isfinite(logits).all()  # the NaN state shows in the logits, where sampling refuses it
    else:
        assert np.isfinite(logits).all()


@PROPERTY
@given(data=st.data())
def test_random_snapshot_bytes_give_a_clear_error_or_the_same_state(decoders, data):
    """Random byte edits of a snapshot: a clear error, or (an edit the content does not depend on, such as
    a zip timestamp) exactly the state that was saved."""
    dec = decoders["torch"]
    state, logits = dec.prefill(["abc", "de"])
    blob = bytearray(snapshot(dec, state, logits))
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    with time_limit(30):
        try:
            restored, restored_logits = restore(dec, bytes(blob))
        except CLEAR_ERRORS as e:
            assert "\n" not in str(e) and str(e)
            event("refused")
            return
        event("restored")
    for a, b in zip(dec.backend.to_host(restored.state), dec.backend.to_host(state.state)):
        assert np.array_equal(a, b)
    assert np.array_equal(restored_logits, logits) and restored.positions.tolist() == state.positions.tolist()
