"""The Triton model repository: its config parsed by tritonclient's own ModelConfig, and Triton's implicit-state
protocol played against onnxruntime (the state output of request n fed back as the input of request n + 1 by
the names in the config, START on the first): the tokens of rfa-export generate."""

import numpy as np
import onnxruntime as ort
import pytest

from rfa_export.cli import main
from rfa_export.runtime import Decoder, OnnxRuntimeBackend

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
text_format = pytest.importorskip("google.protobuf.text_format", reason="protobuf not installed")


@pytest.fixture(scope="module")
def repo(bundled_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton") / "models"
    assert main(["triton", str(bundled_export), "-o", str(root), "--name", "rfa", "--idle-us", "5000000"]) == 0
    return root / "rfa"


def parse(path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def test_config_parses_with_tritons_own_model_config(repo):
    config = parse(repo / "config.pbtxt")
    assert config.name == "rfa" and config.backend == "onnxruntime" and config.max_batch_size == 64
    batcher = config.sequence_batching
    assert batcher.max_sequence_idle_microseconds == 5_000_000 and batcher.HasField("direct")
    controls = {c.name: c.control[0] for c in batcher.control_input}
    assert controls["START"].kind == model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    assert list(controls["START"].int32_false_true) == [0, 1]
    assert controls["READY"].kind == model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY
    assert controls["CORRID"].data_type == model_config_pb2.TYPE_UINT64
    states = batcher.state
    assert [s.input_name for s in states] == [f"past_key_values.{i}.recurrent_state" for i in range(4)]
    assert [s.output_name for s in states] == [f"present.{i}.recurrent_state" for i in range(4)]
    for s in states:
        assert s.data_type == model_config_pb2.TYPE_FP32 and list(s.dims) == [4, 64, 33]
        (initial,) = s.initial_state
        assert initial.zero_data and list(initial.dims) == [4, 64, 33] and initial.data_type == model_config_pb2.TYPE_FP32
    names = [s.input_name for s in states] + [s.output_name for s in states]
    assert not [(a, b) for a in names for b in names if a != b and b.startswith(a)]  # Triton server issue 8586
    assert {i.name for i in config.input} == {"input_ids", "attention_mask"}  # the states are implicit
    assert {o.name for o in config.output} == {"logits", "sequence_id"}
    assert (repo / "1" / "model.onnx").is_file()


def test_the_implicit_state_protocol_gives_the_tokens_of_generate(repo, bundled_export):
    config = parse(repo / "config.pbtxt")
    session = ort.InferenceSession(str(repo / "1" / "model.onnx"))
    prompt = list(b"The import statement")
    want = Decoder(OnnxRuntimeBackend(bundled_export)).generate(["The import statement"], 20)[0].tokens
    # Triton gives a sequence's first request the initial state; START must reset anyway: give garbage
    rng = np.random.default_rng(0)
    state = {s.input_name: rng.standard_normal((1, *s.dims)).astype(np.float32) for s in config.sequence_batching.state}
    ids, start, tokens = np.array([prompt], np.int64), 1, []
    for _ in range(20):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "START": np.array([[start]], np.int32),
                 "READY": np.array([[1]], np.int32), "CORRID": np.array([[42]], np.uint64), **state}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        assert outputs["sequence_id"].tolist() == [[42]]
        token = int(outputs["logits"][0, -1].argmax())
        tokens.append(token)
        state = {s.input_name: outputs[s.output_name] for s in config.sequence_batching.state}  # fed back by name
        ids, start = np.array([[token]], np.int64), 0
    assert tokens == want


def test_start_resets_an_int8_row_state(tmp_path):
    """An int8-row export: START replaces whatever state Triton hands over by zero codes (zero whatever the
    exponent byte), so the implicit-state protocol gives the tokens of generate on the same export."""
    from pathlib import Path

    bundled = str(Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt")
    out, root = tmp_path / "out", tmp_path / "models"
    assert main([bundled, "-o", str(out), "--state-dtype", "int8", "-q"]) == 0
    assert main(["triton", str(out), "-o", str(root), "--name", "rfa"]) == 0
    config = parse(root / "rfa" / "config.pbtxt")
    session = ort.InferenceSession(str(root / "rfa" / "1" / "model.onnx"))
    want = Decoder(OnnxRuntimeBackend(out)).generate(["The import statement"], 12)[0].tokens
    rng = np.random.default_rng(2)
    state = {s.input_name: rng.integers(-127, 128, (1, *s.dims)).astype(np.int8) for s in config.sequence_batching.state}
    assert all(s.data_type == model_config_pb2.TYPE_INT8 for s in config.sequence_batching.state)
    ids, start, tokens = np.array([list(b"The import statement")], np.int64), 1, []
    for _ in range(12):
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "START": np.array([[start]], np.int32),
                 "READY": np.array([[1]], np.int32), "CORRID": np.array([[7]], np.uint64), **state}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        tokens.append(int(outputs["logits"][0, -1].argmax()))
        state = {s.input_name: outputs[s.output_name] for s in config.sequence_batching.state}
        ids, start = np.array([[tokens[-1]]], np.int64), 0
    assert tokens == want


def test_ready_0_leaves_a_slot_untouched(repo):
    config = parse(repo / "config.pbtxt")
    session = ort.InferenceSession(str(repo / "1" / "model.onnx"))
    rng = np.random.default_rng(1)
    state = {s.input_name: np.abs(rng.standard_normal((2, *s.dims))).astype(np.float32) for s in config.sequence_batching.state}
    feeds = {"input_ids": np.array([[65], [66]], np.int64), "attention_mask": np.ones((2, 1), np.int64),
             "START": np.zeros((2, 1), np.int32), "READY": np.array([[1], [0]], np.int32),
             "CORRID": np.array([[1], [2]], np.uint64), **state}
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for s in config.sequence_batching.state:
        assert np.array_equal(outputs[s.output_name][1], state[s.input_name][1])  # the idle slot
        assert not np.array_equal(outputs[s.output_name][0], state[s.input_name][0])


def test_bad_exports_are_refused(tmp_path, bundled_export, capsys):
    code = main(["triton", str(tmp_path), "-o", str(tmp_path / "repo")])
    _, err = capsys.readouterr()
    assert code == 1 and "rfa_export.json" in err and len(err.strip().splitlines()) == 1
    code = main(["triton", str(bundled_export), "-o", str(tmp_path / "repo"), "--plugin-library", "/x.so", "--name", "a"])
    assert code == 0  # the bundled export has the plugin lowering
    config = parse(tmp_path / "repo" / "a" / "config.pbtxt")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"trt_extra_plugin_lib_paths": "/x.so"}
    assert not config.model_operations.op_library_filename  # that would load it as an onnxruntime custom-op library


@pytest.mark.parametrize("name", ["a/b", "", "..", "ünï"])
def test_a_model_name_that_is_not_one_directory_name_is_refused(tmp_path, bundled_export, capsys, name):
    code = main(["triton", str(bundled_export), "-o", str(tmp_path / "repo"), "--name", name])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"model name {name!r}" in err, err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_a_repository_path_that_is_a_file_is_refused(tmp_path, bundled_export, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["triton", str(bundled_export), "-o", str(tmp_path / "file")])
    _, err = capsys.readouterr()
    assert code == 1 and err.strip() == f"rfa-export: error: model repository {tmp_path / 'file'} exists and is not a directory"
    assert (tmp_path / "file").read_text() == "x"
