"""Interop: an export made with --genai runs unmodified under onnxruntime-genai's generate loop."""

import json

import numpy as np
import onnx
import pytest

from helpers import rel_err
from rfa_export.cli import main
from rfa_export.export import export_checkpoint
from rfa_export.runtime import Decoder, OnnxRuntimeBackend, TorchBackend

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai not installed")

BUNDLED = "examples/tiny_rfa.pt"
PROMPTS = ["The import statement", "A class definition", "def f(x):\n    return", "Exceptions", "x"]


@pytest.fixture(scope="module")
def genai_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("genai") / "out"
    assert main([BUNDLED, "-o", str(out), "--genai", "-q"]) == 0
    return out


def genai_greedy(out_dir, prompts, n):
    model = og.Model(str(out_dir))
    encoded = [list(p.encode()) for p in prompts]
    L = max(map(len, encoded))
    batch = np.zeros((len(prompts), L), np.int32)  # right-padded with pad_token_id 0
    for i, e in enumerate(encoded):
        batch[i, : len(e)] = e
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=L + n, do_sample=False, batch_size=len(prompts))
    gen = og.Generator(model, params)
    gen.append_tokens(batch)
    # genai runs the model as soon as tokens arrive: after append_tokens the logits are the prompt's, after
    # each generate_next_token they are those of the token just generated.
    tokens, logits = [[] for _ in prompts], [np.asarray(gen.get_logits())[:, -1].copy()]
    for _ in range(n):
        gen.generate_next_token()
        logits.append(np.asarray(gen.get_logits())[:, -1].copy())
        for i, t in enumerate(gen.get_next_tokens()):
            tokens[i].append(int(t))
    return tokens, logits


def test_files_and_checker(genai_dir):
    config = json.loads((genai_dir / "genai_config.json").read_text())
    assert config["model"]["type"] == "decoder" and config["model"]["vocab_size"] == 256
    assert config["model"]["decoder"]["filename"] == "model.onnx"
    model = onnx.load(str(genai_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    names = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    for i in range(4):
        assert names[f"past_key_values.{i}.recurrent_state"] == ["batch", 4, 64, 33]  # static but for batch
        assert names[f"past_key_values.{i}.conv_state"] == ["batch", 1, 1]


def test_genai_greedy_equals_pytorch(genai_dir):
    ref = Decoder(TorchBackend(BUNDLED))
    for prompt in PROMPTS:
        tokens, _ = genai_greedy(genai_dir, [prompt], 100)
        assert tokens[0] == ref.generate([prompt], 100)[0].tokens, prompt


def test_genai_ragged_batch_equals_each_prompt_alone(genai_dir):
    batched, _ = genai_greedy(genai_dir, PROMPTS, 60)
    for i, prompt in enumerate(PROMPTS):
        solo, _ = genai_greedy(genai_dir, [prompt], 60)
        assert batched[i] == solo[0], prompt


def test_genai_logits_match_onnxruntime_step_by_step(genai_dir):
    prompt = "The import statement"
    tokens, genai_logits = genai_greedy(genai_dir, [prompt], 30)
    dec = Decoder(OnnxRuntimeBackend(genai_dir))
    state, logits = dec.prefill([prompt])
    import torch

    assert rel_err(torch.from_numpy(genai_logits[0]), torch.from_numpy(logits)) <= 1e-5
    for step, token in enumerate(tokens[0]):
        logits, state = dec.step([token], state)
        assert rel_err(torch.from_numpy(genai_logits[step + 1]), torch.from_numpy(logits)) <= 1e-5


def test_genai_export_passes_verify(genai_dir, capsys):
    assert main(["verify", str(genai_dir), "--checkpoint", BUNDLED, "--lengths", "1,9", "--decode-steps", "5"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")


def test_shim_only_under_genai(tmp_path):
    export_checkpoint(BUNDLED, tmp_path)
    names = {i.name for i in onnx.load(str(tmp_path / "model.onnx")).graph.input}
    assert not any("conv_state" in n for n in names)
    assert not (tmp_path / "genai_config.json").exists()
