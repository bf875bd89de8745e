"""The runtime wrapper: one API over backends, ragged batches, slots, snapshots, beam search, bad input (the
TensorRT backend: test_tensorrt_backend.py; the generate verb: test_cli.py)."""

import numpy as np
import pytest
import torch

from helpers import changing_batch_tokens, rel_err
from rfa_export.runtime import (ContinuousBatch, Decoder, DecodeState, InputError, OnnxRuntimeBackend, SamplingParams,
                                TorchBackend, load_snapshot, open_backend, restore, save_snapshot, snapshot)
from rfa_export.runtime.torch_step_graphs import padded_batch

BUNDLED = "examples/tiny_rfa.pt"
PROMPTS = [
    "The import statement", "A class definition", "Assignment statements are used to", "x", "The ",
    "Exceptions", "def f(x):\n    return", "Comparisons", "the with statement", "Lambda expressions",
    "Identifiers (also referred to as names)", "The for statement is used to iterate", "yield", "1 + 2 =",
    "Boolean operations", "In the following", "Unicode", "A function definition defines", "import sys\n", "[",
]


@pytest.fixture(scope="module")
def ort_dir(bundled_export):
    return bundled_export


@pytest.fixture(scope="module")
def decoders(ort_dir):
    return Decoder(TorchBackend(BUNDLED)), Decoder(OnnxRuntimeBackend(ort_dir))


def test_greedy_tokens_identical_20_prompts_100_tokens(decoders):
    torch_dec, ort_dec = decoders
    a = torch_dec.generate(PROMPTS, 100)
    b = ort_dec.generate(PROMPTS, 100)
    assert len(a) == len(b) == 20
    for x, y in zip(a, b):
        assert x.tokens == y.tokens and len(x.tokens) == 100 and x.finish_reason == "length"


def test_step_logits_within_1e_4(decoders):
    torch_dec, ort_dec = decoders
    st_t, lt = torch_dec.prefill(PROMPTS)
    st_o, lo = ort_dec.prefill(PROMPTS)
    worst = rel_err_np(lo, lt)
    for _ in range(100):
        tokens = lt.argmax(-1)
        lt, st_t = torch_dec.step(tokens, st_t)
        lo, st_o = ort_dec.step(tokens, st_o)
        worst = max(worst, rel_err_np(lo, lt))
    assert worst <= 1e-4


def rel_err_np(a, b):
    import torch

    return rel_err(torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b)))


@pytest.mark.parametrize("first, second", [(0, 1), (1, 0)])
def test_state_moves_between_backends(decoders, first, second):
    """Prefill and 20 steps on one backend, snapshot, restore on the other, continue: same tokens as
    staying on the first."""
    decs = decoders
    prompts = PROMPTS[:4]
    state, logits = decs[first].prefill(prompts)
    for _ in range(20):
        logits, state = decs[first].step(logits.argmax(-1), state)
    blob = snapshot(decs[first], state, logits)
    stay = _greedy_continue(decs[first], state, logits, 30)
    moved_state, moved_logits = restore(decs[second], blob)
    moved = _greedy_continue(decs[second], moved_state, moved_logits, 30)
    assert stay == moved


def _greedy_continue(dec, state, logits, n):
    out = []
    for _ in range(n):
        tokens = logits.argmax(-1)
        out.append(tokens.tolist())
        logits, state = dec.step(tokens, state)
    return out


@pytest.mark.parametrize("backend", [0, 1])
def test_ragged_batch_equals_each_prompt_alone(decoders, backend):
    dec = decoders[backend]
    prompts = ["a", "The import statement is", "def", "Comparisons are"]
    batched = dec.generate(prompts, 40)
    for i, p in enumerate(prompts):
        assert dec.generate([p], 40)[0].tokens == batched[i].tokens
    params = SamplingParams(temperature=0.9, top_k=50, top_p=0.9)
    batched = dec.generate(prompts, 40, params, seeds=[7, 8, 9, 10])
    for i, p in enumerate(prompts):
        assert dec.generate([p], 40, params, seeds=[7 + i])[0].tokens == batched[i].tokens


def test_ragged_prefill_logits_match_solo(decoders):
    _, dec = decoders
    prompts = ["ab", "The import statement is", "def f"]
    state, last = dec.prefill(prompts)
    for i, p in enumerate(prompts):
        s1, l1 = dec.prefill([p])
        assert rel_err_np(last[i : i + 1], l1) <= 1e-5
        for a, b in zip(dec.backend.to_host(state.state), dec.backend.to_host(s1.state)):
            assert rel_err_np(a[i : i + 1], b) <= 1e-5
    assert state.positions.tolist() == [2, 23, 5]


def test_continuous_batching_add_and_remove(decoders):
    _, dec = decoders
    solo = {p: dec.generate([p], 30)[0].tokens for p in ("The import statement", "Exceptions", "A class")}
    batch = ContinuousBatch(dec)
    a = batch.add("The import statement", 30)
    for _ in range(10):
        batch.step()
    b = batch.add("Exceptions", 30)
    c = batch.add("A class", 30)
    for _ in range(5):
        batch.step()
    partial = batch.remove(b)
    assert partial.finish_reason == "removed" and len(partial.tokens) == 5
    while batch.active:
        batch.step()
    assert batch.results[a].tokens == solo["The import statement"]
    assert batch.results[c].tokens == solo["A class"]
    assert partial.tokens == solo["Exceptions"][:5]


def test_stream_events_and_stops(decoders):
    _, dec = decoders
    events = list(dec.stream(["The import statement"], 50))
    result = dec.last_results[0]
    assert [e.token for e in events] == result.tokens
    assert "".join(e.text for e in events) == result.text
    assert events[-1].finished == "length" and all(e.finished is None for e in events[:-1])
    stop_at = result.tokens[5]
    r = dec.generate(["The import statement"], 50, stop_tokens=[stop_at])[0]
    assert r.finish_reason == "stop_token" and r.tokens == result.tokens[: result.tokens.index(stop_at) + 1]
    word = result.text[3:7]
    r = dec.generate(["The import statement"], 50, stop_strings=[word])[0]
    assert r.finish_reason == "stop_string" and r.text.endswith(word) and len(r.tokens) <= 7


def test_snapshot_file_round_trip_and_refusals(decoders, tmp_path):
    torch_dec, ort_dec = decoders
    state, logits = ort_dec.prefill(["The import statement", "Exceptions"])
    save_snapshot(tmp_path / "s.npz", ort_dec, state, logits, rows=[1])
    restored, rl = load_snapshot(tmp_path / "s.npz", torch_dec)
    assert restored.batch == 1 and restored.positions.tolist() == [10]
    assert np.array_equal(rl, logits[1:2])
    with pytest.raises(InputError, match="not a state snapshot"):
        restore(ort_dec, b"garbage")
    from rfa_export.model import RFAConfig, RFALanguageModel

    other = Decoder(TorchBackend(RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=4, d_ffn=32, num_features=8))))
    with pytest.raises(InputError, match="different model"):
        restore(other, snapshot(ort_dec, state))


def test_beam_search_reorders_state(decoders):
    torch_dec, ort_dec = decoders
    prompt = "The import statement"
    greedy = ort_dec.generate([prompt], 12)[0].tokens
    assert ort_dec.beam_search(prompt, 1, 12)[0][0] == greedy
    beams = ort_dec.beam_search(prompt, 4, 12, length_penalty=0.0)
    reference = _reference_beam_search(torch_dec, prompt, 4, 12)
    assert [b[0] for b in beams] == [r[0] for r in reference]
    np.testing.assert_allclose([b[1] for b in beams], [r[1] for r in reference], rtol=1e-4)


def _reference_beam_search(dec, prompt, k, steps):
    """Recomputes every hypothesis from scratch (no state reuse, no reordering)."""
    ids = dec.encode(prompt)
    beams = [([], 0.0)]
    for _ in range(steps):
        cands = []
        for seq, score in beams:
            _, logits = dec.prefill([ids + seq])
            z = logits[0].astype(np.float64)
            logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
            for t in np.argsort(-logp, kind="stable")[:k]:
                cands.append((seq + [int(t)], score + float(logp[t])))
        beams = sorted(cands, key=lambda c: -c[1])[:k]
    return beams


@pytest.mark.parametrize("call, message", [
    (lambda d: d.prefill([""]), "prompt 0 is empty"),
    (lambda d: d.prefill([[]]), "prompt 0 is empty"),
    (lambda d: d.prefill(["ok", [1, 300]]), r"prompt 1: token id 300 is out of range \[0, 256\)"),
    (lambda d: d.prefill([[-1]]), "token id -1 is out of range"),
    (lambda d: d.generate(["x"], 0), r"max_new_tokens must be an integer in \[1, 2147483647\], got 0"),
    (lambda d: d.generate(["x"], -3), r"max_new_tokens must be an integer in \[1, "),
    (lambda d: d.step([1, 2], d.new_state(3)), "2 tokens for a state of 3 sequences"),
    (lambda d: d.step([256], d.new_state(1)), "out of range"),
    (lambda d: d.prefill(["a", "b"], d.new_state(3)), "2 prompts but the state holds 3 sequences"),
    (lambda d: d.state_from_arrays([np.zeros((2, 4, 64, 32), np.float32)] * 4, [0, 0]), r"has shape \[2, 4, 64, 32\], expected"),
    (lambda d: d.state_from_arrays([np.zeros((2, 4, 64, 33), np.float64)] * 4, [0, 0]), "has dtype float64, expected float32"),
    (lambda d: d.state_from_arrays([np.zeros((3, 4, 64, 33), np.float32)] * 4, [0, 0]), "with batch 2"),
    (lambda d: d.state_from_arrays([np.zeros((2, 4, 64, 33), np.float32)] * 3, [0, 0]), "state has 3 tensors, the model has 4"),
    (lambda d: d.beam_search("x", 0, 5), r"num_beams must be an integer in \[1, 256\], got 0"),
    # a bare string would otherwise be a batch of one-character prompts
    (lambda d: d.generate("hello", 3), r"prompts must be a list \(of strings or of token-id lists\)"),
    (lambda d: d.generate(["a", "b"], 3, SamplingParams(1.0), seeds=[1]), "seeds must be a list of 2 integers, one per prompt"),
    (lambda d: d.generate(["a"], 3, SamplingParams(1.0), seeds=[-1]), r"seed must be an integer in \[0, "),
    (lambda d: d.generate(["a"], 3, "greedy"), "sampling must be a SamplingParams, got str"),
])
@pytest.mark.parametrize("backend", [0, 1])
def test_bad_input_is_a_clear_error(decoders, backend, call, message):
    with pytest.raises(InputError, match=message):
        call(decoders[backend])


@pytest.mark.parametrize("device, message", [
    ("cuda:99", r"device 'cuda:99': (this torch .* is a build without CUDA|torch sees \d+ CUDA device\(s\))"),
    ("mps", "device 'mps': the torch backends run on cpu or cuda"),
    ("gpu0", "unknown device 'gpu0'"),
])
def test_a_device_torch_cannot_use_is_refused_when_the_backend_opens(device, message):
    with pytest.raises(InputError, match=message):
        TorchBackend(BUNDLED, device=device)


def test_open_backend_refuses_what_a_backend_would_ignore(ort_dir):
    """The registry opens each backend with its class's own options: an option it does not take, a checkpoint
    beside an export or an unknown name is an error; the lazily imported classes are the registered ones."""
    import rfa_export.runtime as runtime
    from rfa_export.runtime.seq2seq import SEQ2SEQ_BACKENDS, open_seq2seq_backend

    backend = open_backend("onnxruntime", ort_dir, threads=1)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.device == "cpu"
    with pytest.raises(ValueError, match=r"the onnxruntime backend takes no option plugin_library \(it takes threads, "):
        open_backend("onnxruntime", ort_dir, plugin_library="lib.so")
    with pytest.raises(ValueError, match="the torch backend takes no option threads"):
        open_backend("torch", checkpoint=BUNDLED, threads=1)
    with pytest.raises(ValueError, match="the onnxruntime backend runs an export, which carries its own weights"):
        open_backend("onnxruntime", ort_dir, checkpoint=BUNDLED)
    with pytest.raises(ValueError, match="the torch backend runs a checkpoint: pass --checkpoint"):
        open_backend("torch", ort_dir)
    with pytest.raises(ValueError, match="unknown backend 'magic'; choose one of onnxruntime, torch, tensorrt"):
        open_backend("magic", ort_dir)
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose one of onnxruntime, torch"):
        open_seq2seq_backend("tensorrt", ort_dir)
    assert runtime.TorchBackend is TorchBackend and runtime.TensorRTBackend.name == "tensorrt"
    assert [e.opens for e in SEQ2SEQ_BACKENDS.values()] == ["export", "checkpoint"]


def _graphed_backend(capture=lambda fn: fn):
    """A TorchBackend whose single-token steps go through StepGraphs, the capture replaced by re-running the step
    on the same static buffers (CUDA graphs need a GPU: tests/gpu/test_runtime_cuda.py replays real ones)."""
    backend = TorchBackend(BUNDLED)
    backend.use_step_graphs(capture)
    return backend


def test_replayed_steps_equal_eager_steps_and_handle_the_state_like_a_device_backend():
    """Prefill, then greedy steps through the static buffers of each batch size, a sequence added (concat) and
    one dropped (select): the same logits and state as the eager backend (float64 check of the state), the
    caller's own state never written, the returned state reused without a copy. Batches of 3 and 4 share the
    graph of 4; at 3 its last row is padding, masked, and keeps its state."""
    eager, graphed = Decoder(TorchBackend(BUNDLED)), Decoder(_graphed_backend())
    se, le = eager.prefill(PROMPTS[:3])
    sg, lg = graphed.prefill(PROMPTS[:3])
    outside = [t.clone() for t in sg.state]
    worst = 0.0
    for i in range(12):
        tokens = le.argmax(-1)
        le, se = eager.step(tokens, se)
        given = sg.state
        lg, sg = graphed.step(tokens, sg)
        static = graphed.backend._graphs._graphs[4].state
        assert all(a.data_ptr() == b.data_ptr() and a.shape == b[:len(tokens)].shape for a, b in zip(sg.state, static))
        if i == 0:  # the prefill's state was copied in, not written
            assert all(torch.equal(a, b) for a, b in zip(given, outside))
        worst = max(worst, rel_err(torch.from_numpy(lg), torch.from_numpy(le)),
                    *(rel_err(a.double(), b.double()) for a, b in zip(sg.state, se.state)))
        if i == 4:  # a fourth sequence joins, then the first leaves: batch sizes 4 and 3 again
            s4e, l4e = eager.prefill([PROMPTS[5]])
            s4g, _ = graphed.prefill([PROMPTS[5]])
            se = DecodeState(eager.backend.concat([se.state, s4e.state]), np.concatenate([se.positions, s4e.positions]))
            sg = DecodeState(graphed.backend.concat([sg.state, s4g.state]), np.concatenate([sg.positions, s4g.positions]))
            le, lg = np.concatenate([le, l4e]), np.concatenate([lg, l4e])
        if i == 8:
            se, sg, le, lg = eager.select(se, [1, 2, 3]), graphed.select(sg, [1, 2, 3]), le[1:], lg[1:]
            padding = [t[3].clone() for t in static]
    assert worst <= 1e-5  # fp32 matmuls over 3 and 4 rows round differently
    assert all(torch.equal(t[3], p) for t, p in zip(static, padding))
    assert list(graphed.backend._graphs._graphs) == [4]


def test_replayed_steps_serve_a_continuous_batch_and_beam_search_like_eager_steps():
    """A continuous batch whose size changes (sequences finish at 10, 20 and 30 tokens, one joins at step 5)
    and beam search, which reorders the state every step, give the eager backend's tokens through the static
    buffers of the padded batch sizes."""
    outputs, beams = [], []
    for dec in (Decoder(_graphed_backend()), Decoder(TorchBackend(BUNDLED))):
        outputs.append(changing_batch_tokens(dec, PROMPTS))
        beams.append(dec.beam_search(PROMPTS[0], 4, 20))
    assert outputs[0] == outputs[1] and [len(t) for t in outputs[0]] == [30, 10, 20, 15]
    assert [seq for seq, _ in beams[0]] == [seq for seq, _ in beams[1]]
    assert np.allclose([score for _, score in beams[0]], [score for _, score in beams[1]], rtol=1e-5)


def test_a_slice_of_the_returned_state_steps_like_eager():
    """Rows 1..3 of the state a replayed step returned (a view of the static state, overlapping the rows it is
    copied into) continue as the eager backend's do."""
    eager, graphed = Decoder(TorchBackend(BUNDLED)), Decoder(_graphed_backend())
    (se, le), (sg, lg) = eager.prefill(PROMPTS[:4]), graphed.prefill(PROMPTS[:4])
    for keep in (slice(0, 4), slice(1, 4), slice(1, 3)):
        se, sg = (DecodeState([t[keep] for t in s.state], s.positions[keep]) for s in (se, sg))
        tokens = le[keep].argmax(-1)
        (le, se), (lg, sg) = eager.step(tokens, se), graphed.step(tokens, sg)
        assert rel_err(torch.from_numpy(lg), torch.from_numpy(le)) <= 1e-5
        assert all(rel_err(a.double(), b.double()) <= 1e-5 for a, b in zip(sg.state, se.state))


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_replayed_steps_keep_a_reduced_state_bit_for_bit(state_dtype):
    """A bf16 or int8-row state updated in place through the static buffers equals the eager backend's new state
    bit for bit (one rounding per step either way), and so do the logits."""
    from rfa_export.model import RFAConfig, RFALanguageModel

    torch.manual_seed(0)
    model = RFALanguageModel(RFAConfig(vocab_size=256, d_model=64, n_heads=2, n_layers=2, d_ffn=128, num_features=16,
                                       positional="sinusoidal", state_dtype=state_dtype)).eval()
    graphed = TorchBackend(model)
    graphed.use_step_graphs(lambda fn: fn)
    eager, graphed = Decoder(TorchBackend(model)), Decoder(graphed)
    se, le = eager.prefill([[1, 2, 3], [4, 5]])
    sg, lg = graphed.prefill([[1, 2, 3], [4, 5]])
    for _ in range(20):
        tokens = le.argmax(-1)
        le, se = eager.step(tokens, se)
        lg, sg = graphed.step(tokens, sg)
        assert np.array_equal(le, lg)
    assert all(a.dtype == getattr(torch, state_dtype) and torch.equal(a, b) for a, b in zip(sg.state, se.state))


def test_step_graphs_keep_the_recent_padded_batch_sizes_and_fall_back_when_a_capture_fails():
    assert [padded_batch(b) for b in range(1, 10)] + [padded_batch(64), padded_batch(65)] == [1, 2, 4, 4, 8, 8, 8, 8, 16, 64, 128]
    backend = _graphed_backend()
    backend._graphs.max_batches = 2
    dec = Decoder(backend)
    for batch in (1, 2, 3, 4, 5, 2):
        state, logits = dec.prefill(PROMPTS[:batch])
        dec.step(logits.argmax(-1), state)
    assert list(backend._graphs._graphs) == [8, 2]  # padded 1, 2, 4, 4, 8, 2: the least recently used dropped first

    def refused(fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    failing, eager = Decoder(_graphed_backend(refused)), Decoder(TorchBackend(BUNDLED))
    with pytest.warns(UserWarning, match="batches padded to 4 decode without a CUDA graph: operation not permitted when stream is capturing$"):
        got = failing.generate(PROMPTS[:3], 5)
    assert [r.tokens for r in got] == [r.tokens for r in eager.generate(PROMPTS[:3], 5)]


def test_cuda_graph_needs_a_cuda_device(ort_dir):
    with pytest.raises(InputError, match="cuda_graph=True needs device cuda"):
        TorchBackend(BUNDLED, cuda_graph=True)
    with pytest.raises(InputError, match="cuda_graph=True needs device cuda"):
        OnnxRuntimeBackend(ort_dir, cuda_graph=True)


def test_sampling_params_are_checked():
    for kw in (dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingParams(**kw)


def test_top_k_and_top_p_restrict_the_support():
    from rfa_export.runtime.sampling import sample_token

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = {sample_token(logits, SamplingParams(1.0, top_k=2), rng) for _ in range(300)}
    assert draws == {0, 1}
    draws = {sample_token(logits, SamplingParams(1.0, top_p=0.7), rng) for _ in range(300)}
    assert draws == {0, 1}
    draws = [sample_token(logits, SamplingParams(1.0), rng) for _ in range(4000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_onnxruntime_backend_refuses_metadata_that_disagrees_with_the_model(ort_dir, tmp_path):
    import json
    import shutil

    from rfa_export.format.metadata import MetadataError

    bad = tmp_path / "bad"
    shutil.copytree(ort_dir, bad)
    meta = json.loads((bad / "rfa_export.json").read_text())
    meta["state"][0]["shape"][-1] = 99
    (bad / "rfa_export.json").write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match=r"rfa_export.json: state\[0\].shape is \['batch', 4, 64, 99\], the config implies \['batch', 4, 64, 33\]"):
        OnnxRuntimeBackend(bad)
