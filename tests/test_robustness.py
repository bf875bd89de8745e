"""No request corrupts another, no NaN becomes text, no small file hangs the machine, no edited file passes
verify (issue 27): one test per numbered case, each failing on the code before the fix."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from helpers import rel_err, reseal, time_limit
from rfa_export.cli import main
from rfa_export.export import export_checkpoint
from rfa_export.format.metadata import MetadataError
from rfa_export.format.publish import STAGING_PREFIX
from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.model.checkpoint import CheckpointError, load_checkpoint
from rfa_export.runtime import (ContinuousBatch, Decoder, InputError, OnnxRuntimeBackend, SamplingParams, TorchBackend,
                                restore, snapshot)
from rfa_export.runtime.backend import NonFiniteError
from rfa_export.runtime.decoder import DecodeState

BUNDLED = str(Path(__file__).resolve().parents[1] / "examples" / "tiny_rfa.pt")
PROMPTS = ["The import statement", "A class definition", "Exceptions are"]
SAMPLING = SamplingParams(temperature=0.9, top_k=40)


@pytest.fixture(scope="module")
def export_dir(bundled_export):
    return bundled_export


@pytest.fixture(scope="module")
def ort(export_dir):
    return Decoder(OnnxRuntimeBackend(export_dir))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def solo_tokens(decoder, prompt, seed, n):
    return decoder.generate([prompt], n, SAMPLING, seeds=[seed])[0].tokens


# --- 1. a step is all-or-nothing, and fails only the bad request ---------------------------------------------


def test_a_request_that_cannot_be_sampled_fails_alone(ort):
    """Row 1's logits are NaN: before, sampling raised in the middle of the step after row 0 had recorded its
    token, so a retry duplicated it. Now row 1 ends with an error event and the others are untouched."""
    batch = ContinuousBatch(ort)
    ids = batch.add_many(PROMPTS, 12, SAMPLING, seeds=[1, 2, 3])
    batch.logits[1] = np.nan
    events = batch.step()
    failed = [e for e in events if e.finished == "error"]
    assert [e.index for e in failed] == [ids[1]] and failed[0].token is None
    assert f"request {ids[1]}: logits contain NaN" in failed[0].error
    assert batch.active == [ids[0], ids[2]]
    while batch.active:
        batch.step()
    assert batch.results[ids[1]].finish_reason == "error" and batch.results[ids[1]].tokens == []
    for i in (0, 2):
        assert batch.results[ids[i]].tokens == solo_tokens(ort, PROMPTS[i], i + 1, 12)


class FlakyBackend:
    """Delegates to a backend and raises once, on the `fail_at`-th call of run."""

    def __init__(self, inner, fail_at):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, *args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost (simulated)")
        return self.inner.run(*args)


def test_a_step_that_fails_in_the_model_changes_nothing(export_dir, ort):
    """The model raises on the 5th call: the step leaves the batch as it was (tokens, random streams, partial
    characters), so retrying gives exactly the uninterrupted result, with no duplicated token."""
    flaky = Decoder(FlakyBackend(OnnxRuntimeBackend(export_dir), fail_at=5))
    batch = ContinuousBatch(flaky)
    ids = batch.add_many(PROMPTS, 10, SAMPLING, seeds=[4, 5, 6])
    failures = 0
    while batch.active:
        try:
            batch.step()
        except RuntimeError as e:
            assert "simulated" in str(e)
            failures += 1
    assert failures == 1
    for i, rid in enumerate(ids):
        assert batch.results[rid].tokens == solo_tokens(ort, PROMPTS[i], 4 + i, 10)
        assert batch.results[rid].text == ort.decode(batch.results[rid].tokens)


# --- 2. non-finite logits or state never become tokens --------------------------------------------------------


def nan_weight_export(export_dir, tmp_path):
    """A copy of the export whose first LayerNorm weight is NaN, sealed as if the exporter had written it."""
    bad = tmp_path / "nan"
    shutil.copytree(export_dir, bad)
    model = onnx.load(str(bad / "model.onnx"))
    init = next(t for t in model.graph.initializer if onnx.numpy_helper.to_array(t).ndim == 1)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr[:] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(bad / "model.onnx"))
    reseal(bad)
    return bad


def test_nan_logits_on_onnxruntime_raise_naming_the_request(export_dir, tmp_path, capsys):
    bad = nan_weight_export(export_dir, tmp_path)
    dec = Decoder(OnnxRuntimeBackend(bad))
    with pytest.raises(NonFiniteError, match=r"request 0: logits contain NaN or infinity"):
        dec.generate(["The import statement"], 5)
    code, out, err = run_cli(capsys, "generate", str(bad), "--prompt", "The import statement", "--max-new-tokens", "5")
    assert code == 1 and out == "" and "\x00" not in out
    assert err.strip().splitlines() == ["rfa-export: error: request 0: logits contain NaN or infinity (the state or "
                                        "the weights are not finite)"]


def test_a_nan_weight_is_refused_by_the_torch_backend_and_the_exporter():
    model = RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)).eval()
    with torch.no_grad():
        model.blocks[0].ffn[0].weight[3, 4] = float("nan")
    with pytest.raises(InputError, match=r"weight blocks.0.ffn.0.weight contains NaN or infinity"):
        TorchBackend(model)
    from rfa_export.export import language_model_to_onnx

    with pytest.raises(ValueError, match=r"weight blocks.0.ffn.0.weight contains NaN or infinity"):
        language_model_to_onnx(model)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_nan_state_or_snapshot_is_refused(export_dir, ort, backend):
    dec = ort if backend == "onnxruntime" else Decoder(TorchBackend(BUNDLED))
    state, logits = dec.prefill(["The import statement", "Exceptions"])
    arrays = dec.backend.to_host(state.state)
    arrays[2][1, 0, 5, 7] = np.nan
    with pytest.raises(InputError, match="state past_key_values.2.recurrent_state contains NaN or infinity"):
        dec.state_from_arrays(arrays, state.positions)
    bad = DecodeState(dec.backend.from_host(arrays), state.positions)
    with pytest.raises(InputError, match="contains NaN or infinity"):
        restore(dec, snapshot(dec, bad, logits))
    # a NaN state that bypassed the checks: the request fails when its logits come out NaN
    batch = ContinuousBatch(dec)
    batch.add_many(["The import statement", "Exceptions"], 5)
    batch.state = DecodeState(dec.backend.from_host(arrays), batch.state.positions)
    events = batch.step() + batch.step()
    assert [e.index for e in events if e.finished == "error"] == [1]
    assert all(e.token is not None for e in events if e.index == 0)


def test_a_non_finite_eps_is_refused_before_anything_runs(tmp_path, capsys):
    payload = torch.load(BUNDLED, weights_only=True)
    for field, value in (("normaliser_eps", float("inf")), ("layer_norm_eps", float("nan")), ("layer_norm_eps", -1.0)):
        path = tmp_path / f"{field}.pt"
        torch.save({**payload, "config": {**payload["config"], field: value}}, path)
        code, _, err = run_cli(capsys, str(path), "-o", str(tmp_path / "out"))
        assert code == 1 and f"config field {field} must be a finite number in" in err and f"got {value}" in err
        assert not (tmp_path / "out" / "model.onnx").exists()


# --- 3. a small file that claims a huge model is refused at once -----------------------------------------------


@pytest.mark.parametrize("claim, message", [
    (dict(n_layers=10**7), r"config field n_layers must be an integer in \[1, 1024\], got 10000000"),
    (dict(num_features=10**9), r"config field num_features must be an integer in \[1, 4096\], got 1000000000"),
    # ~8e11 parameters, every field within its range: refused by comparing names and shapes, not by building
    (dict(n_layers=1000, d_model=8192, n_heads=64, d_ffn=32768), r"weights do not match the config: missing blocks.10.attn.gate.bias, .* and 19916 more"),
])
def test_a_checkpoint_claiming_a_huge_model_is_refused_in_bounded_time(tmp_path, capsys, claim, message):
    payload = torch.load(BUNDLED, weights_only=True)
    path = tmp_path / "claim.pt"
    torch.save({**payload, "config": {**payload["config"], **claim}}, path)
    assert path.stat().st_size < 4_000_000
    with time_limit(10):
        code, _, err = run_cli(capsys, str(path), "-o", str(tmp_path / "out"))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match=message):
            TorchBackend(path)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "model.onnx").exists()


# --- 4. the model's embedded metadata is the authority ------------------------------------------------------------


def test_an_edited_json_or_weight_never_passes(export_dir, tmp_path, capsys):
    """The issue's case: dtype bf16 in the JSON (tolerance 2e-2) and a weight scaled by 1.5."""
    bad = tmp_path / "edited"
    shutil.copytree(export_dir, bad)
    meta = json.loads((bad / "rfa_export.json").read_text())
    meta["dtype"] = "bf16"
    (bad / "rfa_export.json").write_text(json.dumps(meta, indent=2))
    for argv in (["verify", str(bad), "--checkpoint", BUNDLED], ["inspect", str(bad)],
                 ["generate", str(bad), "--prompt", "x", "--max-new-tokens", "2"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "rfa_export.json differs from the metadata inside model.onnx (dtype)" in err, err
    with pytest.raises(MetadataError, match=r"differs from the metadata inside model.onnx \(dtype\)"):
        OnnxRuntimeBackend(bad)
    # the JSON restored, a weight scaled: refused as modified, by every reader
    shutil.copy(export_dir / "rfa_export.json", bad / "rfa_export.json")
    model = onnx.load(str(bad / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(bad / "model.onnx"))
    for argv in (["verify", str(bad), "--checkpoint", BUNDLED], ["inspect", str(bad)],
                 ["generate", str(bad), "--prompt", "x", "--max-new-tokens", "2"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "model.onnx: modified after export" in err, err


def test_verify_takes_its_tolerance_from_the_model(export_dir, tmp_path):
    """Metadata and JSON both edited to bf16 and re-sealed: verify still refuses, since the graph's weights
    are fp32 (the tolerance is the model's, not a claim about it)."""
    from rfa_export.format.metadata import metadata_from_model
    from rfa_export.format.model_file import seal_model
    from rfa_export.tools.verify import VerifyError, verify_export

    bad = tmp_path / "claims_bf16"
    shutil.copytree(export_dir, bad)
    model = onnx.load(str(bad / "model.onnx"))
    meta = metadata_from_model(model)
    meta.dtype = "bf16"
    (bad / "model.onnx").write_bytes(seal_model(model, meta))
    (bad / "rfa_export.json").write_text(meta.to_json())
    with pytest.raises(VerifyError, match="the metadata says bf16 but the graph's weights are fp32"):
        verify_export(bad, BUNDLED, lengths=[3], decode_steps=1)


# --- 5. publishing is one atomic step; killed exports leave nothing behind ----------------------------------------


def test_a_crash_while_publishing_keeps_the_previous_export(export_dir, tmp_path, monkeypatch):
    import rfa_export.format.publish as publish

    out = tmp_path / "out"
    shutil.copytree(export_dir, out)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(a, b):
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(publish, "_exchange", crash)
    other = tmp_path / "other.pt"
    from rfa_export.model.checkpoint import save_checkpoint

    save_checkpoint(RFALanguageModel(RFAConfig(d_model=32, n_heads=2, n_layers=1, d_ffn=32, num_features=8)), other)
    with pytest.raises(OSError, match="power cut"):
        export_checkpoint(other, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
    monkeypatch.undo()
    export_checkpoint(other, out)  # the real publish: one swap; the user's file is carried over
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "notes.txt", "rfa_export.json"]
    assert (out / "notes.txt").read_text() == "mine"
    assert OnnxRuntimeBackend(out).spec.config["d_model"] == 32


def test_a_json_from_another_export_beside_the_model_is_refused(export_dir, tmp_path):
    """What a crash between two renames used to leave: the new JSON beside the old model."""
    other = tmp_path / "other"
    export_checkpoint(BUNDLED, other, lowering="ort")
    mixed = tmp_path / "mixed"
    shutil.copytree(export_dir, mixed)
    shutil.copy(other / "rfa_export.json", mixed / "rfa_export.json")
    with pytest.raises(MetadataError, match=r"rfa_export.json differs from the metadata inside model.onnx \(lowering, "
                                            r"opsets, integrity\)"):
        OnnxRuntimeBackend(mixed)


def test_a_killed_export_leaves_no_staging_folder(tmp_path):
    """An export killed while writing (here: a process holding a staging folder, killed with SIGKILL) leaves
    its folder; the next export removes it, and never a folder whose writer is alive."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, sys, time
        from rfa_export.format.publish import staged_export
        with staged_export({str(out)!r}) as tmp:
            (tmp / "model.onnx").write_bytes(b"partial")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    staging = Path(proc.stdout.readline().strip())
    assert staging.is_dir() and staging.name.startswith(STAGING_PREFIX)
    from rfa_export.format.publish import clean_stale_staging

    clean_stale_staging(tmp_path)
    assert staging.is_dir()  # its writer is alive
    proc.kill()
    proc.wait()
    export_checkpoint(BUNDLED, out)
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- 6. prefill memory is bounded by the chunk ---------------------------------------------------------------------


class RecordingBackend(FlakyBackend):
    def __init__(self, inner):
        super().__init__(inner, fail_at=0)
        self.lengths = []

    def run(self, input_ids, *args):
        self.lengths.append(np.shape(input_ids)[1])
        return self.inner.run(input_ids, *args)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_chunked_prefill_equals_one_pass(export_dir, backend):
    make = (lambda: OnnxRuntimeBackend(export_dir)) if backend == "onnxruntime" else (lambda: TorchBackend(BUNDLED))
    from rfa_export.corpus import pydoc_topics_split

    text = pydoc_topics_split()[1][:3000].decode("utf-8", errors="ignore")
    prompts = [text, text[:1500], "short"]
    recorder = RecordingBackend(make())
    chunked = Decoder(recorder, prefill_chunk=256)
    whole = Decoder(make(), prefill_chunk=10**6)
    s1, l1 = chunked.prefill(prompts)
    s2, l2 = whole.prefill(prompts)
    assert max(recorder.lengths) == 256 and len(recorder.lengths) == -(-len(text.encode()) // 256)
    assert rel_err(torch.from_numpy(l1), torch.from_numpy(l2)) <= 1e-5
    for a, b in zip(chunked.backend.to_host(s1.state), whole.backend.to_host(s2.state)):
        assert rel_err(torch.from_numpy(a), torch.from_numpy(b)) <= 1e-5
    assert s1.positions.tolist() == s2.positions.tolist()


def test_prefill_peak_memory_does_not_grow_with_the_prompt(export_dir):
    """Peak RSS of a 60,000-byte prefill on onnxruntime minus that of a 2,000-byte one: ~1.9 GB before
    (31 KB a token), now bounded by the 512-token chunk."""
    script = textwrap.dedent(f"""
        import resource, sys
        from rfa_export.runtime import Decoder, OnnxRuntimeBackend
        dec = Decoder(OnnxRuntimeBackend({str(export_dir)!r}, threads=2))
        dec.prefill(["x" * 2000])
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dec.prefill(["The import statement. " * 2800])
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    grew_mb = int(proc.stdout.strip())
    assert grew_mb < 100, f"peak memory grew by {grew_mb} MB"


# --- also: raw states, negative and float token ids ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_raw_inputs_are_checked_before_the_backend_runs(ort, backend):
    dec = ort if backend == "onnxruntime" else Decoder(TorchBackend(BUNDLED))
    state, _ = dec.prefill(["ab", "cd"])
    host = dec.backend.to_host(state.state)
    cases = [
        (DecodeState(dec.backend.from_host([a[:, :, :10] for a in host]), state.positions), r"has shape \[2, 4, 10, 33\]"),
        (DecodeState(dec.backend.from_host(host)[:3], state.positions), "state has 3 tensors, the model has 4"),
        (DecodeState(dec.backend.from_host([a[:1] for a in host]), state.positions), "with batch 2"),
    ]
    if backend == "onnxruntime":  # a float64 array given raw (the torch backend's native state is a tensor)
        cases.append((DecodeState([a.astype(np.float64) for a in host], state.positions), "has dtype float64"))
    else:
        cases.append((DecodeState([torch.from_numpy(a).double() for a in host], state.positions), "has dtype float64"))
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            dec.step([1, 2], bad)
    with pytest.raises(InputError, match=r"token id -1 is out of range \[0, 256\)"):
        dec.step([-1, 2], state)
    with pytest.raises(InputError, match="token ids must be integers, got float64"):
        dec.step([1.7, 2.0], state)
    with pytest.raises(InputError, match="token ids must be integers, got float64"):
        dec.prefill([[65.9, 66.2]])
    with pytest.raises(InputError, match=r"input_ids: token id -1 is out of range"):
        dec.backend.run(np.array([[-1]]), np.ones((1, 1), np.int64), None, dec.backend.zeros_state(1))


# --- fuzz: single-byte edits of an export folder --------------------------------------------------------------------

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rfa_export.format.config import ConfigError  # noqa: E402

CLEAR_ERRORS = (InputError, NonFiniteError, ConfigError, MetadataError, CheckpointError)
FUZZ_PROMPTS = ["The import statement", "x"]


@pytest.fixture(scope="module")
def reference_logits(ort):
    return fuzz_run(ort)


def fuzz_run(dec):
    """Prefill two prompts and take 3 greedy steps: every logits row."""
    state, logits = dec.prefill(FUZZ_PROMPTS)
    rows = [logits]
    for _ in range(3):
        logits, state = dec.step(logits.argmax(-1), state)
        rows.append(logits)
    return np.stack(rows)


@settings(max_examples=int(os.environ.get("RFA_PROPERTY_EXAMPLES", 40)), deadline=None,
          derandomize=not os.environ.get("RFA_PROPERTY_SEARCH"), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_single_byte_edits_of_an_export_give_a_clear_error_or_the_same_answer(export_dir, reference_logits, tmp_path_factory,
                                                                              data):
    """Any one byte of any file of the export changed: opening and decoding either fails with a clear error or
    gives the original logits (an edit nothing reads, such as JSON whitespace): never a hang, NaN text or a
    wrong answer."""
    work = tmp_path_factory.mktemp("fuzz") / "out"
    shutil.copytree(export_dir, work)
    name = data.draw(st.sampled_from(sorted(p.name for p in work.iterdir())), label="file")
    content = bytearray((work / name).read_bytes())
    n = len(content)
    offset = data.draw(st.one_of(st.integers(0, n - 1), st.integers(0, min(n, 4096) - 1),
                                 st.integers(max(0, n - 20000), n - 1)), label="offset")
    content[offset] ^= data.draw(st.integers(1, 255), label="xor")
    (work / name).write_bytes(bytes(content))
    with time_limit(60):
        try:
            got = fuzz_run(Decoder(OnnxRuntimeBackend(work)))
        except CLEAR_ERRORS as e:
            assert str(e) and "\n" not in str(e)
            event(f"refused: {type(e).__name__}")
            return
    event(f"same answer ({name})")
    np.testing.assert_allclose(got, reference_logits, rtol=0, atol=1e-5)
