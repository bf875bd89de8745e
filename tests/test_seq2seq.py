"""The encoder-decoder: step decoding against the parallel forward, the two-graph export on every lowering against
PyTorch, beam search (state reordering checked against recomputing every hypothesis), ragged batches, the
decoder graph never touching the source, the bundled model's translations, bad input, and the softmax baseline
against a plain reference."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from helpers import rel_err
from rfa_export.cli import main
from rfa_export.corpus import number_words, number_words_pairs
from rfa_export.export.seq2seq_export import export_seq2seq_checkpoint
from rfa_export.format.config import ConfigError, RFASeq2SeqConfig
from rfa_export.format.lowerings import LOWERINGS
from rfa_export.format.metadata import MetadataError
from rfa_export.model.checkpoint import CheckpointError, load_seq2seq_checkpoint, save_seq2seq_checkpoint
from rfa_export.model.seq2seq import RFASeq2Seq
from rfa_export.runtime import InputError, SamplingParams
from rfa_export.runtime.sampling import log_softmax
from rfa_export.runtime.seq2seq import OnnxRuntimeSeq2SeqBackend, Seq2SeqDecoder, TorchSeq2SeqBackend

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "examples" / "number_words_rfa.pt"
SMALL = dict(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ffn=64, num_features=8)
SOURCES = ["421,305", "7", "12,000", "99"]


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return RFASeq2Seq(RFASeq2SeqConfig(**{**SMALL, **kw})).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """lowering -> (checkpoint, export dir) of one small random model."""
    root = tmp_path_factory.mktemp("s2s")
    checkpoint = root / "small.pt"
    save_seq2seq_checkpoint(small_model(), checkpoint)
    dirs = {}
    for lowering in LOWERINGS:
        export_seq2seq_checkpoint(checkpoint, root / lowering, lowering=lowering)
        dirs[lowering] = root / lowering
    return checkpoint, dirs


# --- the model -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(feature_map="arccos", gated=False), dict(positional="none", shared_vocab=False,
                                                                                    tgt_vocab_size=300, bos_token_id=298,
                                                                                    eos_token_id=299)])
def test_step_decoding_equals_the_parallel_forward(kw):
    model = small_model(**kw)
    src = torch.randint(0, 256, (3, 12))
    src_mask = torch.ones(3, 12, dtype=torch.long)
    src_mask[1, 5:] = 0
    tgt = torch.randint(0, model.config.tgt_vocab_size, (3, 20))
    with torch.no_grad():
        full = model(src, tgt, src_mask)
        _, cross = model.encode(src, src_mask)
        state, steps = model.initial_state(3), []
        for t in range(20):
            logits, state = model.step(tgt[:, t], state, cross, torch.full((3,), t))
            steps.append(logits)
    assert rel_err(torch.stack(steps, 1), full) <= 1e-5


def test_greedy_step_writes_the_argmax_of_its_logits():
    """step(..., next_token=t): the same logits, and their argmax in t, also where t is the step's own input."""
    model = small_model()
    src = torch.randint(0, 256, (3, 12))
    with torch.no_grad():
        _, cross = model.encode(src)
        token = torch.randint(0, model.config.tgt_vocab_size, (3,))
        ref, _ = model.step(token.clone(), model.initial_state(3), cross, torch.zeros(3, dtype=torch.long))
        logits, _ = model.step(token, model.initial_state(3), cross, torch.zeros(3, dtype=torch.long), next_token=token)
    assert torch.equal(logits, ref) and torch.equal(token, ref.argmax(-1))


def test_ragged_sources_and_targets_are_exact():
    """Right-padded sources and target prefixes of different lengths: each row equals its source and prefix
    decoded alone."""
    dec = Seq2SeqDecoder(TorchSeq2SeqBackend(small_model()))
    sources = ["1", "421,305", "12,000"]
    prefixes = [[256, 50, 51, 52, 53], [256], [256, 60, 61]]
    state, last = dec.start(sources, prefixes)
    for i in range(3):
        alone_state, alone = dec.start([sources[i]], [prefixes[i]])
        assert rel_err(torch.from_numpy(last[i:i + 1]), torch.from_numpy(alone)) <= 1e-5
        for a, b in zip(dec.backend.to_host(state.state), dec.backend.to_host(alone_state.state)):
            assert rel_err(torch.from_numpy(a[i:i + 1]), torch.from_numpy(b)) <= 1e-5
    tokens = last.argmax(-1)
    logits, state = dec.step(tokens, state)
    for i in range(3):
        s, lone = dec.start([sources[i]], [prefixes[i] + [int(tokens[i])]])
        assert rel_err(torch.from_numpy(logits[i:i + 1]), torch.from_numpy(lone)) <= 1e-5


# --- export ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_onnxruntime_matches_pytorch_prefill_and_50_steps(exports, lowering):
    checkpoint, dirs = exports
    ort_dec = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(dirs[lowering]))
    ref = Seq2SeqDecoder(TorchSeq2SeqBackend(load_seq2seq_checkpoint(checkpoint), dtype="fp64"))
    sources = [[5, 6, 7], list(b"421,305"), list(range(30, 60)), [200]]  # a ragged batch of 4
    s1, l1 = ort_dec.start(sources)
    s2, l2 = ref.start(sources)
    worst = rel_err(torch.from_numpy(l1), torch.from_numpy(l2))
    for a, b in zip(ort_dec.backend.to_host(s1.cross), ref.backend.to_host(s2.cross)):
        worst = max(worst, rel_err(torch.from_numpy(a), torch.from_numpy(b)))
    for _ in range(50):
        tokens = l2.argmax(-1)
        l1, s1 = ort_dec.step(tokens, s1)
        l2, s2 = ref.step(tokens, s2)
        worst = max(worst, rel_err(torch.from_numpy(l1), torch.from_numpy(l2)))
        for a, b in zip(ort_dec.backend.to_host(s1.state), ref.backend.to_host(s2.state)):
            worst = max(worst, rel_err(torch.from_numpy(a), torch.from_numpy(b)))
    assert worst <= 1e-4


def test_the_decoder_graph_never_touches_the_source(exports):
    """The cross states are inputs of the decoder: no decoder input or intermediate value has the source-length
    axis, so nothing in a step is computed over the source (no encoder-side MatMul)."""
    _, dirs = exports
    for lowering, out in dirs.items():
        decoder = onnx.shape_inference.infer_shapes(onnx.load(str(out / "decoder_model.onnx")))
        values = list(decoder.graph.input) + list(decoder.graph.value_info) + list(decoder.graph.output)
        dims = {d.dim_param for v in values for d in v.type.tensor_type.shape.dim if d.dim_param}
        assert "encoder_sequence_length" not in dims and "decoder_batch" in dims, (lowering, dims)
        assert not [i.name for i in decoder.graph.input if "hidden" in i.name]
        cross = [i for i in decoder.graph.input if i.name.endswith("cross_state")]
        assert len(cross) == 2 and all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in cross)
        encoder = onnx.load(str(out / "encoder_model.onnx"))
        assert [o.name for o in encoder.graph.output][1:] == ["present.0.cross_state", "present.1.cross_state"]


def test_verify_and_inspect(exports, capsys):
    checkpoint, dirs = exports
    code = main(["verify", str(dirs["plugin"]), "--checkpoint", str(checkpoint), "--lengths", "3,9", "--decode-steps", "5"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASS") and "encoder" in out and "numbers" in out
    assert main(["inspect", str(dirs["ort"])]) == 0
    out, _ = capsys.readouterr()
    assert "encoder_model.onnx" in out and "encoder.1.cross_state" in out and "com.microsoft 1" in out


# --- beam search -----------------------------------------------------------------------------------------------------


def reference_beam_search(model, source, k, steps, eos):
    """Every hypothesis recomputed from scratch with the parallel forward (no state reuse or reordering), with
    the selection rules of Seq2SeqDecoder.beam_search; scores not normalised (length_penalty 0), so a source is
    done once k hypotheses ended and the best live one's score is no better than the k-th of them."""
    src = torch.tensor([source])
    beams, finished = [([], 0.0)], []
    for step in range(steps):
        cands = []
        for seq, score in beams:
            with torch.no_grad():
                logits = model(src, torch.tensor([[model.config.bos_token_id] + seq]))[0, -1].double().numpy()
            logp = log_softmax(logits[None])[0]
            cands += [(seq, score + float(logp[t]), int(t)) for t in range(len(logp))]
        cands.sort(key=lambda c: -c[1])
        live = []
        for seq, score, t in cands[: 2 * k]:
            if t == eos:
                finished.append((seq, score))
                continue
            live.append((seq + [t], score))
            if len(live) == k:
                break
        if step == steps - 1 or not live:
            finished += live
            break
        if len(finished) >= k and live[0][1] <= sorted(f[1] for f in finished)[-k]:
            break
        beams = live
    return sorted(finished, key=lambda c: -c[1])[:k]


def test_beam_search_reorders_the_self_state_only(exports):
    checkpoint, dirs = exports
    model = load_seq2seq_checkpoint(checkpoint).double()
    torch_dec = Seq2SeqDecoder(TorchSeq2SeqBackend(model, dtype="fp64"))
    ort_dec = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(dirs["plugin"]))
    sources = [list(b"421,305"), list(b"7"), list(b"12,000")]
    got = ort_dec.beam_search(sources, 4, 8, length_penalty=0.0)
    want = torch_dec.beam_search(sources, 4, 8, length_penalty=0.0)
    assert [[h[0] for h in hyps] for hyps in got] == [[h[0] for h in hyps] for hyps in want]
    assert max(abs(a[1] - b[1]) for g, w in zip(got, want) for a, b in zip(g, w)) <= 1e-4 * max(
        abs(b[1]) for w in want for b in w)
    for source, hyps in zip(sources, want):
        ref = reference_beam_search(model, source, 4, 8, model.config.eos_token_id)
        assert [h[0] for h in hyps] == [r[0] for r in ref]
        np.testing.assert_allclose([h[1] for h in hyps], [r[1] for r in ref], rtol=1e-6)  # logits reach the host as fp32


def test_beam_search_with_fewer_candidates_than_beams_lists_each_hypothesis_once():
    """A 4-token target vocabulary and 4 beams: the first step has 3 live candidates besides EOS. The padding row
    that keeps the source at 4 rows must never be expanded, so the hypotheses are distinct and those of the
    recomputing reference (which runs with 3 rows). The LM head is scaled down so that the padding row's children
    would compete (with these seeds, a repeated row listed [0, 0] twice)."""
    model = small_model(seed=2, shared_vocab=False, tgt_vocab_size=4, bos_token_id=2, eos_token_id=3,
                        tie_embeddings=False).double()
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)
    decoder = Seq2SeqDecoder(TorchSeq2SeqBackend(model, dtype="fp64"))
    for source in ([5, 9, 200], [17]):
        hyps = decoder.beam_search([source], 4, 4, length_penalty=0.0)[0]
        assert len({tuple(h[0]) for h in hyps}) == len(hyps) == 4
        ref = reference_beam_search(model, source, 4, 4, model.config.eos_token_id)
        assert [h[0] for h in hyps] == [r[0] for r in ref]
        np.testing.assert_allclose([h[1] for h in hyps], [r[1] for r in ref], rtol=1e-6)  # fp32 logits


def test_cross_states_are_one_per_source_whatever_the_beams(exports):
    """The decoder reads one cross state per source for all its beams: a step of 3 sources x 4 beams gets
    cross states of batch 3, and its logits equal each row run alone against its source's cross state."""
    _, dirs = exports
    dec = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(dirs["plugin"]))
    state, logits = dec.start(SOURCES[:3], rows_per_source=4)
    assert state.rows == 12 and all(np.shape(c)[0] == 3 for c in dec.backend.to_host(state.cross))
    tokens = np.arange(12) + 40
    logits, state = dec.step(tokens, state)
    for row in (0, 5, 11):
        _, alone = dec.start([SOURCES[row // 4]], [[256, int(tokens[row])]])
        assert rel_err(torch.from_numpy(logits[row:row + 1]), torch.from_numpy(alone)) <= 1e-5


# --- the bundled model -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    if not BUNDLED.is_file():
        pytest.fail(f"{BUNDLED} missing: python examples/train_seq2seq.py writes it")
    return Seq2SeqDecoder(TorchSeq2SeqBackend(BUNDLED))


def test_the_bundled_model_translates_held_out_numbers(bundled):
    """Greedy decoding through the runtime of 200 held-out numbers: exact match as the training report says
    (examples/number_words.json, 1000 numbers), within sampling noise."""
    import json

    report = json.loads((ROOT / "examples" / "number_words.json").read_text())
    pairs = number_words_pairs(200, "test", seed=999)
    results = bundled.generate([s for s, _ in pairs], 80)
    exact = sum(r.text == t for r, (_, t) in zip(results, pairs)) / len(pairs)
    assert exact >= report["rfa_heldout_greedy"]["exact_match"] - 0.08, exact
    assert bundled.generate(["421,305"], 80)[0].text == number_words(421305)


def test_beam_search_runs_on_while_a_live_hypothesis_can_win(bundled):
    """Wrong, shorter translations of 421,305 end first; the source must not stop there while the live
    greedy translation (log-prob about -0.01) can still beat them: 4 beams find it, with the recomputed
    reference's hypotheses and scores (length_penalty 0)."""
    model = bundled.backend.model
    hyps = bundled.beam_search(["421,305"], 4, 80, length_penalty=0.0)[0]
    assert bundled.decode_text(hyps[0][0]) == number_words(421305) and hyps[0][1] > -0.1
    ref = reference_beam_search(model.float(), list(b"421,305"), 4, 80, model.config.eos_token_id)
    assert [h[0] for h in hyps] == [r[0] for r in ref]
    np.testing.assert_allclose([h[1] for h in hyps], [r[1] for r in ref], rtol=1e-4, atol=1e-4)
    normalised = bundled.beam_search(["421,305"], 4, 80)[0]  # length_penalty 1
    assert bundled.decode_text(normalised[0][0]) == number_words(421305)
    assert [h[1] for h in normalised] == sorted((h[1] for h in normalised), reverse=True)


def test_translate_cli(tmp_path, bundled, capsys):
    out = tmp_path / "out"
    assert main([str(BUNDLED), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    sources = ["421,305", "70,013"]
    want = [bundled.decode_text(hyps[0][0]) for hyps in bundled.beam_search(sources, 4, 200)]
    code = main(["translate", str(out), "--source", sources[0], "--source", sources[1], "--beams", "4"])
    text, err = capsys.readouterr()
    assert code == 0 and text.splitlines() == want, text
    assert "4 beams" in err
    code = main(["translate", "--backend", "torch", "--checkpoint", str(BUNDLED), "--source", "421,305"])
    text, _ = capsys.readouterr()
    assert code == 0 and text.strip() == number_words(421305)


# --- bad input ---------------------------------------------------------------------------------------------------------


def test_bad_input_is_one_line(exports, bundled, tmp_path, capsys):
    checkpoint, dirs = exports
    dec = Seq2SeqDecoder(OnnxRuntimeSeq2SeqBackend(dirs["plugin"]))
    with pytest.raises(InputError, match="source 1 is empty"):
        dec.start(["12", ""])
    with pytest.raises(InputError, match="source 0 has 4097 tokens, more than the model's max_source_length 4096"):
        dec.start([[1] * 4097])
    with pytest.raises(InputError, match=r"source 0: token id 300 is out of range \[0, 258\)"):
        dec.start([[1, 300]])
    with pytest.raises(InputError, match=r"prefix 0: token id 258 is out of range"):
        dec.start([[1]], [[256, 258]])
    with pytest.raises(InputError, match=r"step tokens: token id -1 is out of range"):
        dec.step([-1], dec.start([[1]])[0])
    with pytest.raises(InputError, match="sampling must be a SamplingParams, got str"):
        dec.generate(["12"], 3, "greedy")
    with pytest.raises(InputError, match="seeds must be a list of 2 integers, one per source"):
        dec.generate(["12", "3"], 3, SamplingParams(1.0), seeds=[1])
    with pytest.raises(ConfigError, match="bos_token_id and eos_token_id must differ"):
        RFASeq2SeqConfig(bos_token_id=3, eos_token_id=3)
    lm_export = tmp_path / "lm"
    assert main([str(ROOT / "examples" / "tiny_rfa.pt"), "-o", str(lm_export), "-q"]) == 0
    cases = [
        (["generate", str(dirs["plugin"]), "--prompt", "x"], "an encoder-decoder export: use `rfa-export translate`"),
        (["generate", "--backend", "torch", "--checkpoint", str(checkpoint), "--prompt", "x"],
         "an encoder-decoder checkpoint; this takes a language-model one"),
        (["translate", str(lm_export), "--source", "1"], "a language-model export: use `rfa-export generate`"),
        (["translate", "--backend", "torch", "--checkpoint", str(ROOT / "examples" / "tiny_rfa.pt"), "--source", "1"],
         "a language-model checkpoint; this takes an encoder-decoder one"),
        (["verify", str(lm_export), "--checkpoint", str(checkpoint)], "an encoder-decoder checkpoint; this takes a language-model one"),
        (["verify", str(dirs["plugin"]), "--checkpoint", str(ROOT / "examples" / "tiny_rfa.pt")],
         "a language-model checkpoint; this takes an encoder-decoder one"),
        (["translate", str(dirs["plugin"]), "--source", "1" * 5000], "more than the model's max_source_length"),
        (["translate", str(dirs["plugin"]), "--source", ""], "source 0 is empty"),
        ([str(checkpoint), "-o", str(tmp_path / "g"), "--genai"], "--genai is for language models"),
    ]
    for argv, message in cases:
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
    assert not (tmp_path / "g" / "decoder_model.onnx").exists()
    edited = tmp_path / "edited"
    shutil.copytree(dirs["plugin"], edited)
    model = onnx.load(str(edited / "decoder_model.onnx"))
    init = model.graph.initializer[0]
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(edited / "decoder_model.onnx"))
    with pytest.raises(MetadataError, match="decoder_model.onnx: modified after export"):
        OnnxRuntimeSeq2SeqBackend(edited)
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["n_decoder_layers"] = 10**6
    torch.save(payload, tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match=r"n_decoder_layers must be an integer in \[1, 1024\]"):
        load_seq2seq_checkpoint(tmp_path / "huge.pt")


def _softmax_seq2seq_reference(model, src, tgt, src_mask):
    """The softmax baseline written out in plain float64 ops from its parameters: pre-LN blocks, scaled dot-product
    attention (padding keys masked, the decoder's self-attention causal), GELU FFN, tied LM head."""
    from torch.nn import functional as F
    from rfa_export.ops.positions import sinusoidal_positions

    d, H = model.config.d_model, model.config.n_heads

    def norm(ln, x):
        return F.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)

    def attend(att, xq, xkv, allowed):  # allowed [B or 1, Tq, Tk]
        def heads(p, x):
            return (x @ p.weight.T + p.bias).unflatten(-1, (H, d // H)).transpose(1, 2)

        q, k, v = heads(att.q_proj, xq), heads(att.k_proj, xkv), heads(att.v_proj, xkv)
        scores = (q @ k.transpose(-1, -2)) / (d // H) ** 0.5
        weights = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), -1)
        return (weights @ v).transpose(1, 2).flatten(-2) @ att.o_proj.weight.T + att.o_proj.bias

    def ffn(seq, x):
        return F.linear(F.gelu(F.linear(x, seq[0].weight, seq[0].bias)), seq[2].weight, seq[2].bias)

    def embed(table, ids):
        positions = torch.arange(ids.shape[1]).expand(*ids.shape)
        return table(ids) * d ** 0.5 + sinusoidal_positions(positions, d).to(torch.float64)

    keys = (src_mask != 0)[:, None, :]
    x = embed(model.src_embed, src)
    for block in model.encoder:
        h = norm(block.ln_attn, x)
        x = x + attend(block.attn, h, h, keys.expand(-1, src.shape[1], -1))
        x = x + ffn(block.ffn, norm(block.ln_ffn, x))
    memory = norm(model.ln_encoder, x)
    T = tgt.shape[1]
    y = embed(model.tgt_embed, tgt)
    for block in model.decoder:
        h = norm(block.ln_self, y)
        y = y + attend(block.self_attn, h, h, torch.ones(T, T, dtype=torch.bool).tril()[None])
        y = y + attend(block.cross_attn, norm(block.ln_cross, y), memory, keys.expand(-1, T, -1))
        y = y + ffn(block.ffn, norm(block.ln_ffn, y))
    return norm(model.ln_f, y) @ model.lm_head.weight.T


def test_softmax_baseline_matches_its_plain_reference_and_decodes_incrementally():
    """The softmax encoder-decoder (the decoding benchmark's baseline) in float64: teacher forcing against the
    same model written out in plain ops, and decoding position by position from its KV cache against teacher
    forcing."""
    from rfa_export.baselines import SoftmaxSeq2Seq

    torch.manual_seed(3)
    model = SoftmaxSeq2Seq(RFASeq2SeqConfig(**{**SMALL, "positional": "sinusoidal"})).eval().double()
    src, tgt = torch.randint(3, 200, (2, 7)), torch.randint(3, 200, (2, 5))
    src_mask = torch.ones(2, 7)
    src_mask[1, 4:] = 0
    with torch.no_grad():
        logits = model(src, tgt, src_mask)
        ref = _softmax_seq2seq_reference(model, src, tgt, src_mask)
        assert rel_err(logits, ref) <= 1e-12
        _, cross = model.encode(src, src_mask)
        cache, steps = None, []
        for t in range(tgt.shape[1]):
            out, cache = model.decode(tgt[:, t : t + 1], cross, cache, src_mask)
            steps.append(out)
    assert rel_err(torch.cat(steps, 1), logits) <= 1e-12
