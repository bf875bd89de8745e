"""ONNX export: the three lowerings against PyTorch, the local function against the reference, metadata."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import rel_err, scan_inputs
from rfa_export.export.lm_export import export_checkpoint, language_model_to_onnx, write_export
from rfa_export.export.lowering import LOWERINGS
from rfa_export.format.metadata import METADATA_FILE, metadata_from_model, read_metadata_file as read_export_dir
from rfa_export.export.module_export import export_module
from rfa_export.export.scan_function import causal_gated_scan_function
from rfa_export.model import CausalRFASelfAttention, RFAAttention, RFAConfig, RFALanguageModel
from rfa_export.model.checkpoint import save_checkpoint
from rfa_export.ops.causal_gated_scan import naive_causal_gated_scan
from rfa_export.runtime import OnnxRuntimeBackend, TorchBackend
from rfa_export.tools.verify import compare_backends

BUNDLED = "examples/tiny_rfa.pt"
RANDOM_MODELS = {
    "gaussian-gated": dict(feature_map="gaussian", gated=True),
    "gaussian-ungated-sinusoidal": dict(feature_map="gaussian", gated=False, positional="sinusoidal"),
    "arccos-gated-sinusoidal": dict(feature_map="arccos", gated=True, positional="sinusoidal"),
    "arccos-ungated": dict(feature_map="arccos", gated=False, orthogonal_features=False),
}


def random_checkpoint(path, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = RFAConfig(vocab_size=97, d_model=48, n_heads=3, n_layers=2, d_ffn=96, num_features=16, **kw)
    save_checkpoint(RFALanguageModel(cfg), path)
    return path


class _LazyExports(dict):
    """lowering -> out_dir of one checkpoint, exported on first use (the module's tests need 11 of the 15)."""

    def __init__(self, checkpoint, root):
        super().__init__()
        self.checkpoint, self.root = checkpoint, root

    def __missing__(self, lowering):
        out = self.root / lowering
        export_checkpoint(self.checkpoint, out, lowering=lowering)
        self[lowering] = out
        return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> (checkpoint, {lowering: out_dir}), each export made once for the module, when first asked for."""
    root = tmp_path_factory.mktemp("exports")
    result = {}
    for name, kw in [("bundled", None), *RANDOM_MODELS.items()]:
        ckpt = BUNDLED if kw is None else random_checkpoint(root / f"{name}.pt", **kw)
        result[name] = (ckpt, _LazyExports(ckpt, root / name))
    return result


# Every lowering on the bundled model and on an ungated one (the scan without its gate input); the other models,
# whose differences (feature map, positions, orthogonality) lie outside the scan, on the default lowering.
MATCH_CASES = ([("bundled", lowering) for lowering in LOWERINGS]
               + [("gaussian-ungated-sinusoidal", lowering) for lowering in LOWERINGS]
               + [(name, "plugin") for name in ("gaussian-gated", "arccos-gated-sinusoidal", "arccos-ungated")])


@pytest.mark.slow
@pytest.mark.parametrize("name, lowering", MATCH_CASES)
def test_onnxruntime_matches_pytorch(exports, name, lowering):
    """Prefill T in {1, 7, 64, 1000}, then 50 decode steps feeding the state back: relative error <= 1e-4
    against PyTorch in fp32 and in float64, for logits and every state tensor."""
    ckpt, dirs = exports[name]
    backend = OnnxRuntimeBackend(dirs[lowering])
    vocab = backend.vocab_size
    rng = np.random.default_rng(1)
    prompts = {f"T={T}": rng.integers(0, vocab, size=(2, T), dtype=np.int64) for T in (1, 7, 64, 1000)}
    for dtype in ("fp32", "fp64"):
        rows = compare_backends(backend, TorchBackend(ckpt, dtype=dtype), prompts, decode_steps=50)
        worst = max(rows, key=lambda r: r.max_rel)
        assert worst.max_rel <= 1e-4, worst
        assert {r.tensor for r in rows} == {"logits", *[s.output for s in backend.spec.state]}


def test_dynamic_batch_and_sequence(exports):
    ckpt, dirs = exports["gaussian-ungated-sinusoidal"]
    backend, ref = OnnxRuntimeBackend(dirs["plugin"]), TorchBackend(ckpt)
    for B, T in ((1, 1), (5, 33), (3, 2)):
        ids = np.random.default_rng(B).integers(0, 97, size=(B, T))
        pos = np.broadcast_to(np.arange(10, 10 + T), (B, T))
        state = [np.random.default_rng(T).random([B, *s.shape[1:]]).astype(np.float32) for s in backend.spec.state]
        mask = np.ones((B, T + 10), np.int64)  # total_sequence_length longer than sequence: last T columns read
        got, got_state = backend.run(ids, mask, pos, backend.from_host(state))
        want, want_state = ref.run(ids, mask, pos, ref.from_host(state))
        assert rel_err(torch.from_numpy(got), torch.from_numpy(want)) <= 1e-5
        for a, b in zip(got_state, ref.to_host(want_state)):
            assert rel_err(torch.from_numpy(a), torch.from_numpy(b)) <= 1e-5


def test_attention_mask_padding_leaves_state_unchanged(exports):
    _, dirs = exports["gaussian-gated"]
    for lowering in LOWERINGS:
        backend = OnnxRuntimeBackend(dirs[lowering])
        ids = np.random.default_rng(0).integers(0, 97, size=(2, 9))
        pos = np.broadcast_to(np.arange(9), (2, 9)) if backend.needs_positions else None
        _, short = backend.run(ids[:, :6], np.ones((2, 6), np.int64), None if pos is None else pos[:, :6], backend.zeros_state(2))
        mask = np.ones((2, 9), np.int64)
        mask[:, 6:] = 0
        _, padded = backend.run(ids, mask, pos, backend.zeros_state(2))
        for a, b in zip(short, padded):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- the graph itself ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_model_is_checked_and_documented(exports, lowering):
    _, dirs = exports["bundled"]
    path = dirs[lowering] / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    assert model.ir_version == 10
    opsets = {o.domain: o.version for o in model.opset_import}
    meta = read_export_dir(dirs[lowering])
    assert opsets == meta.opsets
    assert metadata_from_model(model) == meta
    assert json.loads((dirs[lowering] / METADATA_FILE).read_text())["lowering"] == lowering
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    assert names_in == ["input_ids", "attention_mask"] + [f"past_key_values.{i}.recurrent_state" for i in range(4)]
    assert names_out == ["logits"] + [f"present.{i}.recurrent_state" for i in range(4)]
    for s in meta.state:
        assert s.shape == ["batch", 4, 64, 33] and s.dtype == "float32" and s.initial_value == "zeros"
    scans = [n for n in model.graph.node if n.op_type in ("CausalGatedScan", "LinearAttention")]
    assert len(scans) == 4
    if lowering == "plugin":
        for n in scans:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert n.domain == "rfa" and attrs["plugin_namespace"] == b"rfa" and attrs["plugin_version"] == b"1"
            assert n.overload == "gated"
        assert [(f.domain, f.name, f.overload) for f in model.functions] == [("rfa", "CausalGatedScan", "gated")]
    else:
        assert {n.domain for n in scans} == {"com.microsoft" if lowering == "ort" else ""}
        assert not model.functions


def test_ungated_model_uses_the_ungated_body(exports):
    _, dirs = exports["arccos-ungated"]
    model = onnx.load(str(dirs["plugin"] / "model.onnx"))
    assert [f.overload for f in model.functions] == ["ungated"]
    assert all(n.input[3] == "" for n in model.graph.node if n.domain == "rfa")


# --- the local function on the op alone -----------------------------------------------------------------


def scan_model(gated: bool, H, F, Dv):
    h, TP = onnx.helper, onnx.TensorProto
    fn = causal_gated_scan_function(gated, 20)
    node = h.make_node("CausalGatedScan", ["q", "k", "v", "g" if gated else "", "s0"], ["out", "state"], domain="rfa",
                       eps=1e-3, plugin_namespace="rfa", plugin_version="1")
    node.overload = fn.overload
    inputs = [h.make_tensor_value_info(n, TP.FLOAT, ["B", "T", H, d]) for n, d in (("q", F), ("k", F), ("v", Dv))]
    if gated:
        inputs.append(h.make_tensor_value_info("g", TP.FLOAT, ["B", "T", H]))
    inputs.append(h.make_tensor_value_info("s0", TP.FLOAT, ["B", H, F, Dv + 1]))
    outputs = [h.make_tensor_value_info("out", TP.FLOAT, ["B", "T", H, Dv]),
               h.make_tensor_value_info("state", TP.FLOAT, ["B", H, F, Dv + 1])]
    model = h.make_model(h.make_graph([node], "scan", inputs, outputs),
                         opset_imports=[h.make_opsetid("", 20), h.make_opsetid("rfa", 1)], functions=[fn])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("gate", [None, "random", "near0", "near1", "exact"])
@pytest.mark.parametrize("T", [1, 5, 16, 17, 100])
def test_local_function_matches_sequential_reference(gate, T):
    H, F, Dv = 3, 64, 8  # D = 32 features: q.z is well conditioned, so fp32 rounding is not amplified
    session = scan_model(gate is not None, H, F, Dv)
    # After a reset (g = 0) den is a single q.k term; sin/cos features can make that ~0, where any fp32
    # implementation (the torch naive loop included) is ill-conditioned. Arc-cosine features keep it > 0.
    kind = "arccos" if gate == "exact" else "gaussian"
    q, k, v, g, s0 = scan_inputs(2, T, H, F, Dv, gate="random" if gate == "exact" else gate, initial_state=True, seed=T, kind=kind)
    if gate == "exact":  # gates of exactly 0 and 1
        g = g.clone()
        g[:, ::3] = 0.0
        g[:, 1::3] = 1.0
    f32 = [t.float() if t is not None else None for t in (q, k, v, g, s0)]
    ref, ref_state = naive_causal_gated_scan(*[t.double() if t is not None else None for t in f32])
    feeds = {"q": f32[0].numpy(), "k": f32[1].numpy(), "v": f32[2].numpy(), "s0": f32[4].numpy()}
    if g is not None:
        feeds["g"] = f32[3].numpy()
    out, state = session.run(None, feeds)
    assert np.isfinite(out).all() and np.isfinite(state).all()
    assert rel_err(torch.from_numpy(out), ref) <= 1e-6
    assert rel_err(torch.from_numpy(state), ref_state) <= 1e-6


# --- dtypes ------------------------------------------------------------------------------------------------


def test_fp16_export_runs_on_cpu_within_1e_2(tmp_path):
    export_checkpoint(BUNDLED, tmp_path, lowering="plugin", dtype="fp16")
    model = onnx.load(str(tmp_path / "model.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["past_key_values.0.recurrent_state"] == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    backend = OnnxRuntimeBackend(tmp_path)
    rng = np.random.default_rng(0)
    prompts = {"random": rng.integers(0, 256, size=(2, 64)), "short": rng.integers(0, 256, size=(2, 3))}
    rows = compare_backends(backend, TorchBackend(BUNDLED, dtype="fp32"), prompts, decode_steps=20)
    worst = max(rows, key=lambda r: r.max_rel)
    assert worst.max_rel <= 1e-2, worst


def test_what_is_not_a_model_of_its_kind_is_refused():
    from rfa_export.export.seq2seq_export import seq2seq_to_onnx
    from rfa_export.format.config import RFASeq2SeqConfig
    from rfa_export.model.seq2seq import RFASeq2Seq

    lm = RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8))
    with pytest.raises(TypeError, match="model must be an RFALanguageModel, got str"):
        language_model_to_onnx("model.pt")
    with pytest.raises(TypeError, match="model must be an RFASeq2Seq, got RFALanguageModel"):
        seq2seq_to_onnx(lm)
    with pytest.raises(TypeError, match="model must be an RFALanguageModel, got RFASeq2Seq"):
        language_model_to_onnx(RFASeq2Seq(RFASeq2SeqConfig(d_model=32, n_heads=2, d_ffn=32, num_features=8,
                                                           n_encoder_layers=1, n_decoder_layers=1)))


def test_bf16_export_is_valid_onnx(tmp_path):
    """bf16 targets CUDA/TensorRT (onnxruntime's CPU provider has no bf16 Mul); the graph must still check."""
    proto, meta = language_model_to_onnx(RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)),
                                         dtype="bf16")
    onnx.checker.check_model(proto, full_check=True)
    assert meta.dtype == "bf16"
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer)


# --- Python API: any module built from rfa_export layers ---------------------------------------------------


class EncoderDecoderBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = RFAAttention(32, 4, "arccos", 8)
        self.gated = CausalRFASelfAttention(32, 4, "gaussian", 8, gated=True)
        self.ungated = CausalRFASelfAttention(32, 4, "gaussian", 8, gated=False)
        self.cross = RFAAttention(32, 4, "gaussian", 8)

    def forward(self, x, memory, state):
        mem = self.encoder(memory)
        y, s1 = self.gated(x, state)
        y, s2 = self.ungated(y)
        return self.cross(y, mem), s1, s2


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_export_module_for_a_custom_module(lowering):
    module = EncoderDecoderBlock().eval()
    sample = {"x": torch.randn(2, 3, 32), "memory": torch.randn(2, 4, 32), "state": torch.rand(2, 4, 16, 9)}
    axes = {"x": {0: "batch", 1: "sequence"}, "memory": {0: "batch", 1: "memory_length"}, "state": {0: "batch"}}
    proto = export_module(module, sample, ["y", "state_out", "ungated_state"], axes, lowering=lowering)
    assert [d.dim_param for d in proto.graph.input[1].type.tensor_type.shape.dim[:2]] == ["batch", "memory_length"]
    if lowering == "plugin":
        assert sorted(f.overload for f in proto.functions) == ["gated", "ungated"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, mem, state = torch.randn(3, 21, 32), torch.randn(3, 7, 32), torch.rand(3, 4, 16, 9)
    got = session.run(None, {"x": x.numpy(), "memory": mem.numpy(), "state": state.numpy()})
    with torch.no_grad():
        want = module(x, mem, state)
    for a, b in zip(got, want):
        assert rel_err(torch.from_numpy(a), b) <= 1e-5


def test_export_module_rejects_size_one_dynamic_axes():
    from rfa_export.export.module_export import ExportError

    module = EncoderDecoderBlock().eval()
    sample = {"x": torch.randn(1, 3, 32), "memory": torch.randn(2, 4, 32), "state": torch.rand(2, 4, 16, 9)}
    with pytest.raises(ExportError, match="size 1 on dynamic axis 0"):
        export_module(module, sample, ["y", "a", "b"], {"x": {0: "batch"}})


def test_write_is_atomic(tmp_path, monkeypatch):
    import rfa_export.export.writing as lm_export

    proto, meta = language_model_to_onnx(RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)))

    def broken_check(*args, **kwargs):
        raise RuntimeError("simulated failure after the model was written")

    monkeypatch.setattr(lm_export, "check_exported", broken_check)
    with pytest.raises(RuntimeError, match="simulated"):
        write_export(proto, meta, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left either


def test_external_data_above_the_threshold(tmp_path, monkeypatch):
    """Weights past the threshold (1 GB; lowered here) go to model.onnx.data beside the model."""
    import rfa_export.export.writing as lm_export

    monkeypatch.setattr(lm_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    export_checkpoint(BUNDLED, tmp_path, lowering="plugin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data", "rfa_export.json"]
    assert (tmp_path / "model.onnx").stat().st_size < 1_000_000 < (tmp_path / "model.onnx.data").stat().st_size
    backend = OnnxRuntimeBackend(tmp_path)
    rows = compare_backends(backend, TorchBackend(BUNDLED), {"r": np.arange(10).reshape(1, 10)}, decode_steps=2)
    assert max(r.max_rel for r in rows) <= 1e-4
    monkeypatch.undo()
    export_checkpoint(BUNDLED, tmp_path, lowering="ort")  # re-export in place: the stale data file goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "rfa_export.json"]
