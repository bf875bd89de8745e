"""The TensorRT backend: what can be tested without TensorRT (the optimisation profile, the engine cache key,
the plugin library's lookup), and a run where TensorRT and a built plugin are present."""

import pytest

from rfa_export.format.metadata import read_metadata_file as read_export_dir
from rfa_export.runtime import Decoder, TorchBackend, open_backend
from rfa_export.runtime.tensorrt_backend import engine_cache_key, find_plugin_library, optimization_profile

BUNDLED = "examples/tiny_rfa.pt"
PROMPTS = ["The import statement", "A class definition", "Assignment statements are used to", "x"]


@pytest.fixture(scope="module")
def ort_dir(bundled_export):
    return bundled_export


def test_tensorrt_profile_covers_every_input(ort_dir):
    spec = read_export_dir(ort_dir)
    profile = optimization_profile(spec, max_batch=64, max_sequence=2048, opt_batch=8, opt_sequence=1)
    assert profile["input_ids"] == ((1, 1), (8, 1), (64, 2048))
    assert profile["attention_mask"] == ((1, 1), (8, 1), (64, 2048))
    assert profile["past_key_values.3.recurrent_state"] == ((1, 4, 64, 33), (8, 4, 64, 33), (64, 4, 64, 33))
    assert set(profile) == {"input_ids", "attention_mask"} | {f"past_key_values.{i}.recurrent_state" for i in range(4)}
    with pytest.raises(ValueError):
        optimization_profile(spec, max_batch=4, max_sequence=16, opt_batch=8)


def test_tensorrt_engine_cache_key(ort_dir, tmp_path):
    spec = read_export_dir(ort_dir)
    p1 = optimization_profile(spec, 64, 2048)
    p2 = optimization_profile(spec, 32, 2048)
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"plugin v1")
    model = ort_dir / "model.onnx"
    k = engine_cache_key(model, lib, "11.1.0", "NVIDIA H200", p1)
    assert k == engine_cache_key(model, lib, "11.1.0", "NVIDIA H200", p1)
    assert k != engine_cache_key(model, lib, "11.1.0", "NVIDIA H200", p2)
    assert k != engine_cache_key(model, lib, "10.8.0", "NVIDIA H200", p1)
    assert k != engine_cache_key(model, lib, "11.1.0", "NVIDIA A100", p1)
    lib.write_bytes(b"plugin v2")
    assert k != engine_cache_key(model, lib, "11.1.0", "NVIDIA H200", p1)


def test_tensorrt_plugin_library_is_required(tmp_path, monkeypatch):
    monkeypatch.delenv("RFA_TRT_PLUGIN", raising=False)
    with pytest.raises(ValueError, match="pass the plugin library"):
        find_plugin_library(None)
    with pytest.raises(ValueError, match="not found"):
        find_plugin_library(tmp_path / "missing.so")


def test_tensorrt_backend_runs(ort_dir):
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    plugin = pytest.importorskip("os").environ.get("RFA_TRT_PLUGIN")
    if not plugin:
        pytest.skip("RFA_TRT_PLUGIN (path of the built plugin library) not set")
    trt_dec = Decoder(open_backend("tensorrt", ort_dir, plugin_library=plugin))
    ref = Decoder(TorchBackend(BUNDLED))
    assert trt_dec.generate(PROMPTS, 50)[0].tokens == ref.generate(PROMPTS, 50)[0].tokens
