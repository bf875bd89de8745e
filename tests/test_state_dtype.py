"""A bfloat16 state (docs/op_contract.md, "State dtype"): the op, the model, the export and the runtimes, on
the CPU, against float64 references that round the state where the contract says."""

import numpy as np
import onnx
import pytest
import torch

from helpers import rel_err, scan_inputs
from rfa_export.format.config import ConfigError, RFAConfig
from rfa_export.model.lm import RFALanguageModel
from rfa_export.ops.causal_gated_scan import (causal_gated_scan, causal_gated_scan_, check_scan_inputs,
                                              chunk_causal_gated_scan, naive_causal_gated_scan)

BF16 = torch.bfloat16
HALF_ULP = 2.0**-8  # half a bf16 ulp, relative: a rounded bf16 state against the unrounded float64 one
ULP = 2.0**-7  # one bf16 ulp, relative: two rounded states that may round apart


@pytest.mark.parametrize("gate", [None, "random", "near1"])
@pytest.mark.parametrize("T", [1, 37])
def test_scan_widens_accumulates_and_rounds_once(gate, T):
    q, k, v, g, s = scan_inputs(2, T, 3, 16, 8, gate=gate, initial_state=True, seed=T)
    s16 = s.to(BF16)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, s16.double())  # float64 from the widened state
    args = [t.float() if t is not None else None for t in (q, k, v, g)]
    for out, state in (chunk_causal_gated_scan(*args, s16, chunk_size=8), causal_gated_scan(*args, s16),
                       naive_causal_gated_scan(*args, s16)):
        assert state.dtype == BF16
        assert rel_err(out, ref) <= 1e-5
        assert rel_err(state, ref_state) <= HALF_ULP + 1e-6
        # round to nearest: the bf16 state is the float64 one rounded, up to fp32's own error at a tie
        assert torch.equal(state, ref_state.to(BF16)) or rel_err(state, ref_state.to(BF16)) <= ULP


def test_in_place_op_keeps_the_bf16_buffer():
    q, k, v, g, s = scan_inputs(2, 5, 2, 16, 8, gate="random", initial_state=True)
    state = s.to(BF16)
    ptr = state.data_ptr()
    _, want = naive_causal_gated_scan(q, k, v, g, state.double())
    causal_gated_scan_(q.float(), k.float(), v.float(), g.float(), state)
    assert state.dtype == BF16 and state.data_ptr() == ptr
    assert rel_err(state, want) <= HALF_ULP + 1e-6


def test_other_state_dtypes_are_refused():
    q, k, v, g, s = scan_inputs(1, 2, 1, 8, 4, gate="random", initial_state=True, dtype=torch.float32)
    for bad in (torch.float16, torch.float64, torch.int8):
        with pytest.raises(ValueError, match="initial_state dtype must be one of"):
            check_scan_inputs(q, k, v, g, s.to(bad))
    with pytest.raises(ConfigError, match="state_dtype must be one of float32, bfloat16"):
        RFAConfig(state_dtype="float16")
    with pytest.raises(ConfigError, match="needs a gated model"):
        RFAConfig(state_dtype="bfloat16", gated=False)


def _model(**kw):
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ffn=64, num_features=8,
                    state_dtype="bfloat16", **kw)
    return RFALanguageModel(cfg).eval()


def _float64_decode(model, ids):
    """The contract in float64: each step from the stored (bf16) state, the new state rounded to bf16."""
    ref = RFALanguageModel(model.config).double().eval()
    ref.load_state_dict(model.state_dict())
    B, T = ids.shape
    state = [s.double() for s in ref.initial_state(B)]
    logits = []
    with torch.no_grad():
        for t in range(T):
            out, state = ref(ids[:, t : t + 1], state, torch.full((B, 1), t))
            state = [s.to(BF16).double() for s in state]
            logits.append(out[:, 0])
    return torch.stack(logits, 1), state


def test_model_decodes_with_a_bf16_state():
    model = _model()
    ids = torch.randint(0, 40, (3, 30), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_state = _float64_decode(model, ids)
    state = model.initial_state(3)
    assert all(s.dtype == BF16 for s in state)
    with torch.no_grad():
        logits = [model.step(ids[:, t], state, torch.full((3,), t), inplace_state=True)[0] for t in range(30)]
        _, from_empty = model(ids)
    assert all(s.dtype == BF16 for s in state + from_empty)
    assert rel_err(torch.stack(logits, 1), ref_logits) <= 2e-3
    assert max(rel_err(s, r) for s, r in zip(state, ref_state)) <= ULP


@pytest.mark.parametrize("lowering", ["plugin", "onnx", "ort"])
def test_export_and_onnxruntime_take_a_bf16_state(lowering, tmp_path):
    from rfa_export.export.lm_export import export_checkpoint
    from rfa_export.model.checkpoint import save_checkpoint
    from rfa_export.runtime.decoder import Decoder
    from rfa_export.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from rfa_export.runtime.torch_backend import TorchBackend

    model = _model()
    save_checkpoint(model, tmp_path / "m.pt")
    meta = export_checkpoint(tmp_path / "m.pt", tmp_path / "out", lowering=lowering)
    assert all(s.dtype == "bfloat16" for s in meta.state)
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert all(types[s.input] == types[s.output] == onnx.TensorProto.BFLOAT16 for s in meta.state)

    ids = torch.randint(0, 40, (2, 25), generator=torch.Generator().manual_seed(2))
    ref_logits, ref_state = _float64_decode(model, ids)
    ort_backend = OnnxRuntimeBackend(tmp_path / "out")
    decoder = Decoder(ort_backend)
    state, first = decoder.prefill([ids[0, :5].tolist(), ids[1, :5].tolist()])  # 5 tokens in one call
    with torch.no_grad():
        ref_prefill, _ = model(ids[:, :5])
    assert rel_err(torch.from_numpy(np.asarray(first)), ref_prefill[:, -1]) <= 2e-3
    steps = []
    for t in range(5, 25):
        logits, state = decoder.step(ids[:, t].numpy(), state)
        steps.append(torch.from_numpy(np.asarray(logits)))
    host = ort_backend.to_host(state.state)
    assert all(a.dtype == np.float32 for a in host)  # the portable form
    # bf16 is exact in float32: a round trip through the host form changes nothing
    assert all(np.array_equal(a, b) for a, b in zip(host, ort_backend.to_host(ort_backend.from_host(host))))
    # after the 5-token prefill the state was rounded once, not per token: compare the steps' logits loosely
    # with the per-step float64 reference, and the torch backend's state (same semantics) tightly
    torch_backend = TorchBackend(tmp_path / "m.pt")
    tdec = Decoder(torch_backend)
    tstate, _ = tdec.prefill([ids[0, :5].tolist(), ids[1, :5].tolist()])
    for t in range(5, 25):
        tlogits, tstate = tdec.step(ids[:, t].numpy(), tstate)
    assert rel_err(steps[-1], torch.from_numpy(np.asarray(tlogits))) <= 2e-3
    assert rel_err(steps[-1], ref_logits[:, 24]) <= 2e-2
    assert max(rel_err(torch.from_numpy(a), torch.from_numpy(b))
               for a, b in zip(host, torch_backend.to_host(tstate.state))) <= ULP


def test_cli_exports_verifies_and_serves_a_bf16_state(tmp_path, capsys):
    """rfa-export --state-dtype bfloat16 on the bundled (gated, fp32-state) checkpoint: verify against the float64
    reference that rounds its state the same way, and a Triton config whose implicit state is TYPE_BF16."""
    from pathlib import Path

    from rfa_export.cli import main

    bundled = str(Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt")
    out = tmp_path / "out"
    assert main([bundled, "-o", str(out), "--state-dtype", "bfloat16", "-q"]) == 0
    assert main(["verify", str(out), "--checkpoint", bundled, "--lengths", "1,16", "--decode-steps", "8"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["triton", str(out), "-o", str(tmp_path / "models"), "--name", "rfa"]) == 0
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
    from google.protobuf import text_format

    config = text_format.Parse((tmp_path / "models" / "rfa" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert all(s.data_type == model_config_pb2.TYPE_BF16 and s.initial_state[0].data_type == model_config_pb2.TYPE_BF16
               for s in config.sequence_batching.state)


def test_cli_refuses_a_bf16_state_it_cannot_honour(tmp_path, capsys):
    from pathlib import Path

    from rfa_export.cli import main
    from rfa_export.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ungated = RFALanguageModel(RFAConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, d_ffn=64, num_features=8,
                                         gated=False))
    save_checkpoint(ungated, tmp_path / "ungated.pt")
    seq2seq = str(Path(__file__).resolve().parents[1] / "examples" / "number_words_rfa.pt")
    for checkpoint, message in ((tmp_path / "ungated.pt", "needs a gated model"),
                                (seq2seq, "--state-dtype is for language models")):
        out = tmp_path / "out"
        assert main([str(checkpoint), "-o", str(out), "--state-dtype", "bfloat16", "-q"]) != 0
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())
