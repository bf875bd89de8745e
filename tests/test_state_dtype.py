"""Reduced-precision states (docs/op_contract.md, "State dtype"): bfloat16 and int8 rows, through the op, the
model, the export and the runtimes, on the CPU, against float64 references that round the state where the
contract says."""

import numpy as np
import onnx
import pytest
import torch

from helpers import rel_err, scan_inputs
from rfa_export.format.config import ConfigError, RFAConfig, RFASeq2SeqConfig
from rfa_export.model.lm import RFALanguageModel
from rfa_export.model.seq2seq import RFASeq2Seq
from rfa_export.ops.causal_gated_scan import (causal_gated_scan, causal_gated_scan_, check_scan_inputs,
                                              chunk_causal_gated_scan, naive_causal_gated_scan)
from rfa_export.ops.causal_gated_scan.state_storage import int8_row_exponent, narrow_state, widen_state

BF16 = torch.bfloat16
HALF_ULP = 2.0**-8  # half a bf16 ulp, relative: a rounded bf16 state against the unrounded float64 one
ULP = 2.0**-7  # one bf16 ulp, relative: two rounded states that may round apart
INT8_STEP = 2 / 127  # one int8 code step, relative to its row's largest entry (at most)
STEP = {"bfloat16": ULP, "int8": INT8_STEP}  # what two states rounded apart may differ by
REDUCED = ["bfloat16", "int8"]


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


def _boundary_rows(n_cols=9):
    """Rows whose largest |entry| sits at, just above and just below every 127 * 2^e, plus zero rows."""
    e = torch.arange(-125, 120, dtype=torch.float64)
    bound = 127 * torch.exp2(e)
    maxima = torch.cat([bound, bound * (1 + 2**-23), bound * (1 - 2**-24), torch.zeros(2)]).float()
    x = torch.randn(len(maxima), n_cols, generator=torch.Generator().manual_seed(3))
    x = x / x.abs().amax(-1, keepdim=True) * maxima[:, None]
    return torch.nan_to_num(x)


def test_int8_row_exponent_is_the_least_that_fits():
    m = _boundary_rows().abs().amax(-1)
    e = int8_row_exponent(m).double()
    fits = 127 * torch.exp2(e) >= m.double()
    least = (127 * torch.exp2(e - 1) < m.double()) | (e == -120)
    assert bool(fits.all()) and bool(least.all())
    assert int(e.max()) == 120 and int(e.min()) == -120  # the zero rows take the least exponent
    # past 127 * 2^120 the exponent saturates and so do the codes
    huge = narrow_state(torch.tensor([[3e38, -2e38, 1e38]]), torch.int8)
    assert huge.tolist() == [[127, -127, 75, 120]]  # 1e38 / 2^120 = 75.2


def test_int8_rows_round_to_nearest_within_half_a_step():
    x = _boundary_rows()
    stored = narrow_state(x, torch.int8)
    assert stored.dtype == torch.int8 and stored.shape == (x.shape[0], x.shape[1] + 1)
    codes, e = stored[:, :-1].double(), stored[:, -1:].double()
    assert int(codes.abs().max()) <= 127
    step = torch.exp2(e)
    assert bool(((widen_state(stored, x.shape[1] - 1, torch.float64) - x.double()).abs() <= step / 2).all())
    # stored values are exact: storing them again keeps every value
    again = narrow_state(widen_state(stored, x.shape[1] - 1, torch.float32), torch.int8)
    assert torch.equal(widen_state(again, x.shape[1] - 1, torch.float64), codes * step)


def test_onnx_int8_rows_match_the_torch_codes():
    """The exporter's standard-op encoding (a float log2 corrected by exact comparisons) gives the same codes and
    exponents as the torch op's frexp, at every exponent's boundary; its decoding the same values."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from rfa_export.export.onnx_builder import NodeWriter
    from rfa_export.export.state_storage_nodes import float_state_to_int8, int8_state_to_float

    w = NodeWriter("")
    w.nodes.append(helper.make_node("Identity", [float_state_to_int8(w, "x")], ["stored"]))
    w.nodes.append(helper.make_node("Identity", [int8_state_to_float(w, "stored")], ["values"]))
    graph = helper.make_graph(w.nodes, "codec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 9])],
                              [helper.make_tensor_value_info("stored", TensorProto.INT8, ["n", 10]),
                               helper.make_tensor_value_info("values", TensorProto.FLOAT, ["n", 9])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _boundary_rows()
    stored, values = session.run(None, {"x": x.numpy()})
    want = narrow_state(x, torch.int8)
    assert np.array_equal(stored, want.numpy())
    assert np.array_equal(values, widen_state(want, 8, torch.float32).numpy())


@pytest.mark.parametrize("gate", ["random", "near1"])
@pytest.mark.parametrize("T", [1, 37])
def test_scan_with_an_int8_state_rounds_each_row_once(gate, T):
    q, k, v, g, s = scan_inputs(2, T, 3, 16, 8, gate=gate, initial_state=True, seed=T)
    s8 = narrow_state(s, torch.int8)
    assert s8.shape == (2, 3, 16, 10)
    ref, ref_state = naive_causal_gated_scan(q, k, v, g, widen_state(s8, 8, torch.float64))  # unrounded float64
    args = [t.float() for t in (q, k, v, g)]
    half_step = torch.exp2(narrow_state(ref_state, torch.int8)[..., -1:].double()) / 2
    for out, state in (chunk_causal_gated_scan(*args, s8, chunk_size=8), causal_gated_scan(*args, s8),
                       naive_causal_gated_scan(*args, s8), naive_causal_gated_scan(q, k, v, g, s8)):
        assert state.dtype == torch.int8 and state.shape == s8.shape
        assert rel_err(out, ref) <= 1e-5
        # each entry within half a step of its row (plus fp32's own error) of the unrounded result
        err = (widen_state(state, 8, torch.float64) - ref_state).abs()
        assert bool((err <= half_step * (1 + 1e-3) + 1e-6 * ref_state.abs().amax(-1, keepdim=True)).all())


def test_in_place_op_keeps_the_int8_buffer():
    q, k, v, g, s = scan_inputs(2, 5, 2, 16, 8, gate="random", initial_state=True)
    state = narrow_state(s, torch.int8)
    ptr = state.data_ptr()
    _, want = naive_causal_gated_scan(q, k, v, g, state)
    causal_gated_scan_(q.float(), k.float(), v.float(), g.float(), state)
    assert state.dtype == torch.int8 and state.data_ptr() == ptr
    assert rel_err(widen_state(state, 8, torch.float64), widen_state(want, 8, torch.float64)) <= INT8_STEP


def test_other_state_dtypes_are_refused():
    q, k, v, g, s = scan_inputs(1, 2, 1, 8, 4, gate="random", initial_state=True, dtype=torch.float32)
    for bad in (torch.float16, torch.float64, torch.int16):
        with pytest.raises(ValueError, match="initial_state dtype must be one of"):
            check_scan_inputs(q, k, v, g, s.to(bad))
    with pytest.raises(ConfigError, match="state_dtype must be one of float32, bfloat16, int8"):
        RFAConfig(state_dtype="float16")
    with pytest.raises(ConfigError, match="needs a gated model"):
        RFAConfig(state_dtype="bfloat16", gated=False)


def _model(state_dtype="bfloat16", **kw):
    torch.manual_seed(0)
    cfg = RFAConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ffn=64, num_features=8,
                    state_dtype=state_dtype, **kw)
    return RFALanguageModel(cfg).eval()


def _values(state, Dv=16):
    """What a stored state stands for, float64 [.., F, Dv + 1] (the test models have head_dim 16)."""
    return widen_state(state, Dv, torch.float64)


def _float64_decode(model, ids):
    """The contract in float64: each step widens the stored state and the scan rounds the new one once (the
    float64 model keeps the config's storage dtype)."""
    ref = RFALanguageModel(model.config).double().eval()
    ref.load_state_dict(model.state_dict())
    B, T = ids.shape
    state = ref.initial_state(B)
    logits = []
    with torch.no_grad():
        for t in range(T):
            out, state = ref(ids[:, t : t + 1], state, torch.full((B, 1), t))
            logits.append(out[:, 0])
    assert all(s.dtype == model.state_dtype for s in state)
    return torch.stack(logits, 1), state


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
def test_with_state_dtype_keeps_each_weights_dtype_and_copies_it(kind):
    """A converted model is the same model in the same dtypes (float64 and bfloat16 weights here), sharing no
    storage, with the new state dtype: not a float32 model on the CPU."""
    if kind == "lm":
        model = _model("float32")
    else:
        torch.manual_seed(0)
        model = RFASeq2Seq(RFASeq2SeqConfig(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ffn=64,
                                            num_features=8)).eval()
    model.double()
    first, *_ = model.parameters()
    first.data = first.data.to(torch.bfloat16)
    next(p for n, p in model.named_parameters() if n.endswith("bias")).requires_grad_(False)
    converted = model.with_state_dtype("int8")
    assert converted.config.state_dtype == "int8" and model.config.state_dtype == "float32"
    assert converted.training == model.training
    before, after = model.state_dict(), converted.state_dict()
    assert before.keys() == after.keys()
    for name, t in before.items():
        assert after[name].dtype == t.dtype and after[name].device == t.device, name
        assert torch.equal(after[name], t) and after[name].data_ptr() != t.data_ptr(), name
    assert all(p.requires_grad == model.get_parameter(n).requires_grad for n, p in converted.named_parameters())
    assert len(list(converted.parameters())) == len(list(model.parameters()))  # tied embeddings stay tied


@pytest.mark.parametrize("state_dtype", REDUCED)
def test_model_decodes_with_a_reduced_state(state_dtype):
    model = _model(state_dtype)
    ids = torch.randint(0, 40, (3, 30), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_state = _float64_decode(model, ids)
    state = model.initial_state(3)
    assert all(s.dtype == model.state_dtype and s.shape[1:] == model.config.state_shape for s in state)
    with torch.no_grad():
        logits = [model.step(ids[:, t], state, torch.full((3,), t), inplace_state=True)[0] for t in range(30)]
        _, from_empty = model(ids)
    assert all(s.dtype == model.state_dtype for s in state + from_empty)
    assert rel_err(torch.stack(logits, 1), ref_logits) <= 2e-3
    assert max(rel_err(_values(s), _values(r)) for s, r in zip(state, ref_state)) <= STEP[state_dtype]


@pytest.mark.parametrize("state_dtype", REDUCED)
@pytest.mark.parametrize("lowering", ["plugin", "onnx", "ort"])
def test_export_and_onnxruntime_take_a_reduced_state(lowering, state_dtype, tmp_path):
    from rfa_export.export.lm_export import export_checkpoint
    from rfa_export.runtime.state_values import state_values
    from rfa_export.model.checkpoint import save_checkpoint
    from rfa_export.runtime.decoder import Decoder
    from rfa_export.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from rfa_export.runtime.torch_backend import TorchBackend

    model = _model(state_dtype)
    save_checkpoint(model, tmp_path / "m.pt")
    meta = export_checkpoint(tmp_path / "m.pt", tmp_path / "out", lowering=lowering)
    assert all(s.dtype == state_dtype for s in meta.state)
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    want = {"bfloat16": onnx.TensorProto.BFLOAT16, "int8": onnx.TensorProto.INT8}[state_dtype]
    assert all(types[s.input] == types[s.output] == want for s in meta.state)

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
    # the stored entries are exact in float32: a round trip through the host form changes nothing
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
    assert max(rel_err(torch.from_numpy(state_values(a, state_dtype)), torch.from_numpy(state_values(b, state_dtype)))
               for a, b in zip(host, torch_backend.to_host(tstate.state))) <= STEP[state_dtype]


@pytest.mark.parametrize("state_dtype, triton_type", [("bfloat16", "TYPE_BF16"), ("int8", "TYPE_INT8")])
def test_cli_exports_verifies_and_serves_a_reduced_state(state_dtype, triton_type, tmp_path, capsys):
    """rfa-export --state-dtype on the bundled (gated, fp32-state) checkpoint: verify against the float64
    reference that rounds its state the same way, and a Triton config whose implicit state has that type."""
    from pathlib import Path

    from rfa_export.cli import main

    bundled = str(Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt")
    out = tmp_path / "out"
    assert main([bundled, "-o", str(out), "--state-dtype", state_dtype, "-q"]) == 0
    assert main(["verify", str(out), "--checkpoint", bundled, "--lengths", "1,16", "--decode-steps", "8"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["triton", str(out), "-o", str(tmp_path / "models"), "--name", "rfa"]) == 0
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
    from google.protobuf import text_format

    config = text_format.Parse((tmp_path / "models" / "rfa" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    want = model_config_pb2.DataType.Value(triton_type)
    assert all(s.data_type == want and s.initial_state[0].data_type == want for s in config.sequence_batching.state)


def test_cli_refuses_a_bf16_state_it_cannot_honour(tmp_path, capsys):
    from rfa_export.cli import main
    from rfa_export.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ungated = RFALanguageModel(RFAConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, d_ffn=64, num_features=8,
                                         gated=False))
    save_checkpoint(ungated, tmp_path / "ungated.pt")
    out = tmp_path / "out"
    assert main([str(tmp_path / "ungated.pt"), "-o", str(out), "--state-dtype", "bfloat16", "-q"]) != 0
    err = capsys.readouterr().err
    assert "needs a gated model" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_tensorrt_backend_takes_an_int8_state_export(tmp_path, monkeypatch):
    """The plugin stores int8 rows (its harness runs them on the GPU): an int8-row export is not refused for its
    state; with TensorRT hidden, the backend goes on to say that TensorRT is missing."""
    import sys

    from rfa_export.export.lm_export import export_checkpoint
    from rfa_export.model.checkpoint import save_checkpoint
    from rfa_export.runtime.tensorrt_backend import TensorRTBackend, TensorRTUnavailable

    save_checkpoint(_model("int8"), tmp_path / "m.pt")
    export_checkpoint(tmp_path / "m.pt", tmp_path / "out")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(TensorRTUnavailable, match="TensorRT not installed"):
        TensorRTBackend(tmp_path / "out")


@pytest.mark.parametrize("state_dtype", REDUCED)
def test_genai_runs_a_reduced_state_export(state_dtype, tmp_path):
    """onnxruntime-genai binds the state by the graph's own type: greedy tokens equal the runtime's on the export."""
    from pathlib import Path

    from rfa_export.cli import main
    from rfa_export.runtime.decoder import Decoder
    from rfa_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai not installed")
    bundled = str(Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt")
    out = tmp_path / "out"
    assert main([bundled, "-o", str(out), "--genai", "--state-dtype", state_dtype, "-q"]) == 0
    prompt = b"The import statement"
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 40, do_sample=False, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([list(prompt)], np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    got = [int(t) for t in gen.get_sequence(0)[len(prompt):]]
    want = Decoder(OnnxRuntimeBackend(out)).generate([prompt.decode()], 40)[0].tokens
    assert got == want
