"""An encoder-decoder whose decoder self states are stored as bfloat16 or int8 rows (docs/op_contract.md, "State
dtype"; cross states stay float32): the model against a float64 per-step reference that rounds the state where the
contract says, the two-graph export on every lowering on onnxruntime, beam search, the CLI and verify."""

from pathlib import Path

import onnx
import pytest
import torch

from helpers import rel_err
from rfa_export.cli import main
from rfa_export.export.seq2seq_export import export_seq2seq_checkpoint
from rfa_export.format.config import ConfigError, RFASeq2SeqConfig
from rfa_export.format.lowerings import LOWERINGS
from rfa_export.model.checkpoint import save_seq2seq_checkpoint
from rfa_export.model.seq2seq import RFASeq2Seq
from rfa_export.ops.causal_gated_scan.state_storage import widen_state
from rfa_export.runtime.seq2seq import OnnxRuntimeSeq2SeqBackend, Seq2SeqDecoder, TorchSeq2SeqBackend
from rfa_export.runtime.state_values import state_values

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ffn=64, num_features=8)
DV = 16  # head_dim of SMALL
REDUCED = ["bfloat16", "int8"]
STEP = {"bfloat16": 2.0**-7, "int8": 2 / 127}  # what two states rounded apart may differ by, relative
ONNX_TYPES = {"bfloat16": onnx.TensorProto.BFLOAT16, "int8": onnx.TensorProto.INT8}
SOURCES = [[5, 6, 7], list(b"421,305"), list(range(30, 60)), [200]]  # a ragged batch of 4
# int8 rows through every lowering, bf16 through the plugin one (the language model's tests, test_state_dtype.py,
# take bf16 through every lowering; each export here costs ~20 s of CI)
EXPORTED = [("int8", lowering) for lowering in LOWERINGS] + [("bfloat16", "plugin")]


def small_model(state_dtype, seed=0):
    torch.manual_seed(seed)
    return RFASeq2Seq(RFASeq2SeqConfig(**SMALL, state_dtype=state_dtype)).eval()


def float64_steps(model, src, src_mask, tgt):
    """The contract in float64: each step widens the stored self state and the scan rounds the new one once."""
    ref = RFASeq2Seq(model.config).double().eval()
    ref.load_state_dict(model.state_dict())
    B, T = tgt.shape
    with torch.no_grad():
        _, cross = ref.encode(src, src_mask)
        state, logits = ref.initial_state(B), []
        for t in range(T):
            out, state = ref.step(tgt[:, t], state, cross, torch.full((B,), t))
            logits.append(out)
    assert all(s.dtype == model.state_dtype for s in state)
    return torch.stack(logits, 1), state


@pytest.mark.parametrize("state_dtype", REDUCED)
def test_decoder_steps_with_a_reduced_self_state(state_dtype):
    model = small_model(state_dtype)
    gen = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, 256, (3, 12), generator=gen), torch.randint(0, 258, (3, 25), generator=gen)
    src_mask = torch.ones(3, 12, dtype=torch.long)
    src_mask[1, 5:] = 0
    ref_logits, ref_state = float64_steps(model, src, src_mask, tgt)
    with torch.no_grad():
        _, cross = model.encode(src, src_mask)
        state = model.initial_state(3)
        assert all(s.dtype == model.state_dtype and s.shape[1:] == model.config.state_shape for s in state)
        logits = [model.step(tgt[:, t], state, cross, torch.full((3,), t), inplace_state=True)[0] for t in range(25)]
        _, from_none = model.decode(tgt[:, :4], cross)
    assert all(c.dtype == torch.float32 and c.shape[1:] == model.config.cross_state_shape for c in cross)
    assert all(s.dtype == model.state_dtype for s in state + from_none)
    assert rel_err(torch.stack(logits, 1), ref_logits) <= 2e-3
    assert max(rel_err(widen_state(s, DV, torch.float64), widen_state(r, DV, torch.float64))
               for s, r in zip(state, ref_state)) <= STEP[state_dtype]


def test_a_reduced_self_state_needs_a_gate():
    with pytest.raises(ConfigError, match="state_dtype 'bfloat16' needs a gated model"):
        RFASeq2SeqConfig(**SMALL, gated=False, state_dtype="bfloat16")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(state_dtype, lowering) of EXPORTED -> (model, export dir)."""
    root = tmp_path_factory.mktemp("s2s_state")
    out = {}
    for state_dtype in REDUCED:
        model = small_model(state_dtype)
        save_seq2seq_checkpoint(model, root / f"{state_dtype}.pt")
        for lowering in [low for dtype, low in EXPORTED if dtype == state_dtype]:
            export_seq2seq_checkpoint(root / f"{state_dtype}.pt", root / f"{state_dtype}_{lowering}", lowering=lowering)
            out[state_dtype, lowering] = model, root / f"{state_dtype}_{lowering}"
    return out


@pytest.mark.parametrize("state_dtype, lowering", EXPORTED)
def test_onnxruntime_matches_the_float64_reference(exports, lowering, state_dtype):
    """Self states in and out of the decoder graph in their dtype, cross states float32; prefill and 40 steps on
    onnxruntime against PyTorch in float64 rounding its self states the same way."""
    model, out = exports[state_dtype, lowering]
    graph = onnx.load(str(out / "decoder_model.onnx")).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    backend = OnnxRuntimeSeq2SeqBackend(out)
    assert all(types[s.input] == types[s.output] == ONNX_TYPES[state_dtype] for s in backend.spec.state)
    assert all(types[c.input] == onnx.TensorProto.FLOAT for c in backend.spec.cross_state)
    got, ref = Seq2SeqDecoder(backend), Seq2SeqDecoder(TorchSeq2SeqBackend(model, dtype="fp64"))
    s1, l1 = got.start(SOURCES)
    s2, l2 = ref.start(SOURCES)
    worst_logits, worst_state = rel_err(torch.from_numpy(l1), torch.from_numpy(l2)), 0.0
    for _ in range(40):
        tokens = l2.argmax(-1)
        l1, s1 = got.step(tokens, s1)
        l2, s2 = ref.step(tokens, s2)
        worst_logits = max(worst_logits, rel_err(torch.from_numpy(l1), torch.from_numpy(l2)))
        for a, b in zip(backend.to_host(s1.state), ref.backend.to_host(s2.state)):
            worst_state = max(worst_state, rel_err(torch.from_numpy(state_values(a, state_dtype)),
                                                   torch.from_numpy(state_values(b, state_dtype))))
    assert worst_logits <= 1e-3 and worst_state <= STEP[state_dtype], (worst_logits, worst_state)


@pytest.mark.parametrize("state_dtype", REDUCED)
def test_beam_search_reorders_reduced_self_states(exports, state_dtype):
    """Beam reordering keeps the stored codes: onnxruntime's hypotheses and scores equal the float64 reference's."""
    model, out = exports[state_dtype, "plugin"]
    sources = [list(b"421,305"), list(b"7"), list(b"12,000")]
    got = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(out)).beam_search(sources, 4, 10, length_penalty=0.0)
    want = Seq2SeqDecoder(TorchSeq2SeqBackend(model, dtype="fp64")).beam_search(sources, 4, 10, length_penalty=0.0)
    assert [[h[0] for h in hyps] for hyps in got] == [[h[0] for h in hyps] for hyps in want]
    assert max(abs(a[1] - b[1]) for g, w in zip(got, want) for a, b in zip(g, w)) <= 1e-4 * max(
        abs(b[1]) for w in want for b in w)


@pytest.mark.parametrize("state_dtype", REDUCED)
def test_cli_exports_verifies_and_translates_the_bundled_model(state_dtype, tmp_path, capsys):
    """--state-dtype on the bundled (fp32-state) encoder-decoder: verify PASSes against the float64 reference
    rounding the same way, and beam search translates held-out numbers as the float32 state does."""
    bundled = ROOT / "examples" / "number_words_rfa.pt"
    out = tmp_path / "out"
    assert main([str(bundled), "-o", str(out), "--state-dtype", state_dtype, "-q"]) == 0
    assert main(["verify", str(out), "--checkpoint", str(bundled), "--lengths", "3,12", "--decode-steps", "6"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")
    sources = ["421,305", "70,013", "9,999"]
    fp32 = Seq2SeqDecoder(TorchSeq2SeqBackend(bundled))
    want = [fp32.decode_text(hyps[0][0]) for hyps in fp32.beam_search(sources, 4, 120)]
    argv = ["translate", str(out), "--beams", "4"] + [a for s in sources for a in ("--source", s)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == want


def test_cli_refuses_a_reduced_state_for_an_ungated_encoder_decoder(tmp_path, capsys):
    torch.manual_seed(0)
    save_seq2seq_checkpoint(RFASeq2Seq(RFASeq2SeqConfig(**SMALL, gated=False)), tmp_path / "ungated.pt")
    out = tmp_path / "out"
    assert main([str(tmp_path / "ungated.pt"), "-o", str(out), "--state-dtype", "int8", "-q"]) != 0
    err = capsys.readouterr().err
    assert "needs a gated model" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_onnxruntime_on_cuda_refuses_a_reduced_self_state(exports):
    """Reduced self states are bound on the CPU only (as for language models): CUDA is refused in one line, before
    onnxruntime is asked for a provider it may lack."""
    _, out = exports["bfloat16", "plugin"]
    with pytest.raises(ValueError, match="takes a bfloat16 self state on the CPU only") as err:
        OnnxRuntimeSeq2SeqBackend(out, device="cuda")
    assert "\n" not in str(err.value)
