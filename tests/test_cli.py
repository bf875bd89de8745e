"""The rfa-export command line: export/verify/inspect/generate, and one-line errors for bad input."""

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from helpers import reseal
from rfa_export.cli import main
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.model.checkpoint import save_checkpoint
from rfa_export.runtime import Decoder, TorchBackend

BUNDLED = str(Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    assert main([BUNDLED, "-o", str(out), "--quiet"]) == 0
    return out


def test_export_prints_progress_and_the_model_path(tmp_path, capsys):
    code, out, err = run_cli(capsys, BUNDLED, "-o", str(tmp_path / "o"), "--scan", "ort")
    assert code == 0
    assert out.strip() == str(tmp_path / "o" / "model.onnx")
    assert "tracing and converting with torch.onnx" in err and " s\n" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.onnx", "rfa_export.json"]


def test_explicit_export_verb(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "export", BUNDLED, "-o", str(tmp_path), "-q")
    assert code == 0 and (tmp_path / "model.onnx").is_file()


def test_inspect(exported, capsys):
    code, out, _ = run_cli(capsys, "inspect", str(exported))
    assert code == 0
    for text in ("lowering: plugin", "ai.onnx 20, rfa 1", "rfa::CausalGatedScan (gated)",
                 "past_key_values.3.recurrent_state -> present.3.recurrent_state  float32 ['batch', 4, 64, 33]",
                 "logits", "[S | z]"):
        assert text in out
    code, out, _ = run_cli(capsys, "inspect", str(exported), "--json")
    data = json.loads(out)
    assert data["scan_nodes"] == 4 and data["opsets"] == {"ai.onnx": 20, "rfa": 1}


def test_verify_passes_and_fails(exported, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "verify", str(exported), "--checkpoint", BUNDLED, "--lengths", "1,9", "--decode-steps", "5")
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("PASS")
    assert "text B=2 5 decode steps" in out and "present.3.recurrent_state" in out
    # one weight of a copy scaled by 1.5: refused as modified; and once re-sealed (as a wrong export would
    # be), verify compares and fails on the numbers
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    model = onnx.load(str(bad / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 2] *= 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(bad / "model.onnx"))
    code, out, err = run_cli(capsys, "verify", str(bad), "--checkpoint", BUNDLED, "--lengths", "4", "--decode-steps", "2")
    assert code == 1 and "model.onnx: modified after export" in err and len(err.strip().splitlines()) == 1
    reseal(bad)
    code, out, _ = run_cli(capsys, "verify", str(bad), "--checkpoint", BUNDLED, "--lengths", "4", "--decode-steps", "2")
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("FAIL") and "over tolerance" in out


def test_verify_rejects_a_checkpoint_of_another_model(exported, tmp_path, capsys):
    other = tmp_path / "other.pt"
    save_checkpoint(RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)), other)
    code, _, err = run_cli(capsys, "verify", str(exported), "--checkpoint", str(other))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "does not match the export" in err


def test_polygraphy_runs_the_model_and_compares_with_saved_pytorch_outputs(exported, tmp_path, capsys):
    polygraphy = shutil.which("polygraphy", path=os.path.dirname(sys.executable))
    if polygraphy is None:
        pytest.skip("polygraphy not installed")
    plain = subprocess.run([polygraphy, "run", str(exported / "model.onnx"), "--onnxrt"], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    code, _, _ = run_cli(capsys, "verify", str(exported), "--checkpoint", BUNDLED, "--lengths", "6", "--decode-steps", "0",
                         "--save-polygraphy", str(tmp_path / "pg"))
    assert code == 0
    compare = subprocess.run([polygraphy, "run", str(exported / "model.onnx"), "--onnxrt",
                              "--load-inputs", str(tmp_path / "pg" / "inputs.json"),
                              "--load-outputs", str(tmp_path / "pg" / "torch_outputs.json"),
                              "--rtol", "1e-4", "--atol", "1e-4"], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout[-2000:] + compare.stderr[-2000:]
    assert "PASSED" in compare.stdout + compare.stderr


# --- bad input: one line on stderr, non-zero exit, no traceback, no model file --------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(BUNDLED).read_bytes()[:100_000])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "rfa-export/checkpoint", "format_version": 1, "config": _Evil(tmp_path / "pwned"), "state_dict": {}}, evil)
    raw_evil = tmp_path / "evil_raw.pt"
    raw_evil.write_bytes(pickle.dumps({"x": _Evil(tmp_path / "pwned")}, protocol=2))
    mismatch = tmp_path / "mismatch.pt"
    payload = torch.load(BUNDLED, weights_only=True)
    payload["config"]["d_ffn"] = 256
    torch.save(payload, mismatch)
    return {
        "missing": (tmp_path / "absent.pt", "no such file"),
        "not a checkpoint": (text, "not a torch checkpoint|not a readable torch checkpoint"),
        "truncated": (truncated, "possibly truncated"),
        "pickle payload": (evil, "refused.*nothing in it was executed"),
        "raw pickle payload": (raw_evil, "refused.*nothing in it was executed"),
        "config/weights mismatch": (mismatch, r"weights do not match the config: .*ffn.0.weight has shape \(512, 128\), the config implies \(256, 128\)"),
    }


@pytest.mark.parametrize("case", ["missing", "not a checkpoint", "truncated", "pickle payload", "raw pickle payload",
                                  "config/weights mismatch"])
def test_bad_checkpoint_is_one_line(tmp_path, capsys, case):
    path, message = _bad_checkpoints(tmp_path)[case]
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, str(path), "-o", str(out_dir))
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rfa-export: error: ")
    import re

    assert re.search(message, err), err
    assert "Traceback" not in err + out
    assert not (out_dir / "model.onnx").exists()
    assert not (tmp_path / "pwned").exists()


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out_dir, message in ((blocker, "exists and is not a directory"), (blocker / "sub", "cannot write to output directory")):
        code, out, err = run_cli(capsys, BUNDLED, "-o", str(out_dir))
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert blocker.read_text() == "x"


def test_unknown_scan_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([BUNDLED, "-o", str(tmp_path), "--lowering", "magic"])
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'magic'" in err
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (["verify", "out", "--checkpoint", "m.pt", "--batch", "0"], "argument --batch: must be a positive integer, got 0"),
    (["verify", "out", "--checkpoint", "m.pt", "--tolerance", "-1"], "argument --tolerance: must be a positive number"),
    (["verify", "out", "--checkpoint", "m.pt", "--tolerance", "nan"], "argument --tolerance: must be a finite number"),
    (["translate", "out", "--source", "1", "--length-penalty", "inf"], "argument --length-penalty: must be a finite"),
    (["generate", "out", "--prompt", "x", "--stop", ""], "argument --stop: must not be empty"),
    (["serve", "out", "--port", "70000"], "argument --port: must be a TCP port in [0, 65535]"),
    (["serve", "out", "--port", "http"], "argument --port: expected an integer, got 'http'"),
])
def test_bad_option_values_are_usage_errors(capsys, argv, message):
    """Checked by argparse before any file is read: exit code 2 and one line naming the option."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    _, err = capsys.readouterr()
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("command", [["generate", "--prompt", "x"], ["translate", "--source", "1"], ["serve"]])
@pytest.mark.parametrize("option", ["--checkpoint", "--tokenizer"])
def test_options_an_export_would_ignore_are_refused(exported, capsys, command, option):
    """An export carries its own model and tokenizer: --checkpoint or --tokenizer beside one is an error."""
    code, _, err = run_cli(capsys, command[0], str(exported), *command[1:], option, "somewhere")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{option} is for --backend torch" in err, err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "x", "--plugin-library", "lib.so"], "--plugin-library is for --backend tensorrt"),
    (["generate", "--prompt", "x", "--engine-cache", "cache"], "--engine-cache is for --backend tensorrt"),
    (["generate", "--prompt", "x", "--backend", "tensorrt", "--device", "cpu"],
     "the tensorrt backend runs on cuda (pick the GPU with device_id), not 'cpu'"),
    (["serve", "--backend", "torch", "--checkpoint", BUNDLED, "--threads", "2"], "--threads is for --backend onnxruntime"),
    (["generate", "--prompt", "x", "--cuda-graph"], "--cuda-graph needs --device cuda"),
    (["generate", "--prompt", "x", "--backend", "tensorrt", "--cuda-graph"],
     "--cuda-graph is for --backend onnxruntime or torch, not tensorrt"),
    (["serve", "--backend", "torch", "--checkpoint", BUNDLED, "--cuda-graph"], "--cuda-graph needs --device cuda"),
    (["serve", "--plugin-library", "lib.so"], "--plugin-library is for --backend tensorrt"),
    (["serve", "--backend", "tensorrt", "--device", "cpu", "--port", "0"],
     "the tensorrt backend runs on cuda (pick the GPU with device_id), not 'cpu'"),
    pytest.param(["serve", "--backend", "tensorrt", "--port", "0"], "TensorRT not installed",
                 marks=pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                          reason="TensorRT installed: the server would start and serve")),
])
def test_options_the_backend_would_ignore_are_refused(exported, capsys, argv, message):
    """An option of another backend, or a device the backend cannot run on, is one line, not silently dropped."""
    code, _, err = run_cli(capsys, argv[0], str(exported), *argv[1:])
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err


def test_serve_passes_cuda_graph_to_the_backend_on_cuda_only():
    from rfa_export.cli import build_parser
    from rfa_export.cli.serve_cmd import server_options

    parse = build_parser().parse_args
    on = server_options(parse(["serve", "--backend", "torch", "--checkpoint", BUNDLED, "--device", "cuda", "--cuda-graph"]))
    off = server_options(parse(["serve", "--backend", "torch", "--checkpoint", BUNDLED, "--device", "cuda"]))
    assert on["backend_options"] == {"cuda_graph": True} and off["backend_options"] == {}


def test_ray_serve_needs_a_fixed_port(exported, capsys):
    code, _, err = run_cli(capsys, "serve", str(exported), "--ray", "--port", "0")
    assert code == 1 and err.strip() == ("rfa-export: error: --ray needs a fixed --port (Ray's HTTP proxy does not "
                                         "report a free one it picked)"), err


def test_a_bf16_export_on_the_cpu_provider_is_one_line(tmp_path, capsys):
    """onnxruntime's CPU provider has no bf16 kernels (the first case checks that this is still so): generate,
    verify and a KIND_CPU Triton repository refuse a bf16 export in one line instead of failing inside onnxruntime."""
    import onnxruntime as ort

    checkpoint = tmp_path / "small.pt"
    save_checkpoint(RFALanguageModel(RFAConfig(vocab_size=256, d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)),
                    checkpoint)
    out = tmp_path / "bf16"
    assert main([str(checkpoint), "-o", str(out), "--dtype", "bf16", "-q"]) == 0
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    capsys.readouterr()
    for argv in (["generate", str(out), "--prompt", "x"], ["verify", str(out), "--checkpoint", str(checkpoint)],
                 ["triton", str(out), "-o", str(tmp_path / "repo"), "--cpu"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert "a bf16 export does not run on onnxruntime's CPU provider" in err, err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
    assert main(["triton", str(out), "-o", str(tmp_path / "repo")]) == 0  # KIND_GPU: Triton runs it on CUDA


def test_failure_during_export_leaves_no_model(tmp_path, capsys, monkeypatch):
    import rfa_export.export.writing as lm_export

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(lm_export, "check_exported", boom)
    code, _, err = run_cli(capsys, BUNDLED, "-o", str(tmp_path / "o"), "-q")
    assert code == 1 and "disk full (simulated)" in err
    assert list((tmp_path / "o").iterdir()) == []


def test_inspect_and_verify_on_a_non_export(tmp_path, capsys):
    for argv in (["inspect", str(tmp_path)], ["verify", str(tmp_path), "--checkpoint", BUNDLED], ["inspect", str(tmp_path / "nope")]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "rfa_export.json" in err or "no such export directory" in err


def test_console_script_has_no_traceback(tmp_path):
    exe = shutil.which("rfa-export", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("rfa-export console script not installed (pip install -e .)")
    proc = subprocess.run([exe, str(tmp_path / "missing.pt"), "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"rfa-export: error: {tmp_path / 'missing.pt'}: no such file"]
    help_text = subprocess.run([exe, "export", "--help"], capture_output=True, text=True).stdout
    assert "--lowering {plugin,onnx,ort}, --scan {plugin,onnx,ort}" in help_text and "LinearAttention" in help_text


# --- generate -------------------------------------------------------------------------------------------


def test_generate_cli_prints_only_text(exported, capsys):
    assert main(["generate", str(exported), "--prompt", "The import statement", "--max-new-tokens", "25"]) == 0
    out, err = capsys.readouterr()
    expected = Decoder(TorchBackend(BUNDLED)).generate(["The import statement"], 25)[0].text
    assert out == expected + "\n"
    assert "tokens/s" in err and "[onnxruntime cpu]" in err
    assert main(["generate", "--backend", "torch", "--checkpoint", BUNDLED, "--prompt", "The import statement",
                 "--max-new-tokens", "25"]) == 0
    out, _ = capsys.readouterr()
    assert out == expected + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt 0 is empty"),
    (["--prompt", "x", "--temperature", "nan"], "temperature must be a finite number in [0, 10000], got nan"),
    (["--prompt", "x", "--temperature", "0.5", "--top-p", "2"], "top_p must be a finite number in (0, 1], got 2.0"),
    (["--prompt", "x", "--temperature", "0.5", "--top-k", "-1"], "top_k must be an integer in [0, 2147483647], got -1"),
    (["--prompt", "x", "--stop-token", "300"], "stop_tokens: token id 300 is out of range [0, 256)"),
    (["--backend", "torch", "--prompt", "x"], "pass --checkpoint"),
    (["--backend", "tensorrt", "--prompt", "x"], "TensorRT not installed"),
])
def test_generate_cli_errors(exported, capsys, argv, message):
    code = main(["generate", str(exported), *argv])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
