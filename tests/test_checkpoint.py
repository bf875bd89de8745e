"""The checkpoint file: exact round trip, and a clear error for every kind of bad file."""

import os
import pickle
import zipfile

import pytest
import torch

from rfa_export.model import RFAConfig, RFALanguageModel
from rfa_export.model.checkpoint import FORMAT_NAME, CheckpointError, load_checkpoint, save_checkpoint

CFG = RFAConfig(d_model=32, n_heads=2, n_layers=2, d_ffn=64, num_features=8)


@pytest.fixture
def ckpt(tmp_path):
    model = RFALanguageModel(CFG).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, metadata={"note": "test"})
    return model, path


def payload(path):
    return torch.load(path, weights_only=True)


def test_round_trip_is_exact(ckpt):
    model, path = ckpt
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == lsd.keys()
    assert all(torch.equal(sd[k], lsd[k]) for k in sd)
    assert loaded.lm_head.weight is loaded.embed.weight
    ids = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded(ids)[0])
    assert not loaded.training


def test_save_is_atomic(tmp_path):
    model = RFALanguageModel(CFG)
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"", bytes(range(256)) * 4])
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a (readable )?torch checkpoint"):
        load_checkpoint(path)


def test_truncated(ckpt, tmp_path):
    _, path = ckpt
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a readable torch checkpoint|truncated"):
            load_checkpoint(bad)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_pickle_payload_is_refused_and_never_executed(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"format": FORMAT_NAME, "format_version": 1, "config": _RunsCode(marker), "state_dict": {}}
    if container == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError, match="refused.*posix.system.*nothing in it was executed"):
        load_checkpoint(path)
    assert not marker.exists()


def _rewrite(path, mutate):
    p = payload(path)
    mutate(p)
    torch.save(p, path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.pop("state_dict"), "missing keys: state_dict"),
        (lambda p: p.pop("config"), "missing keys: config"),
        (lambda p: p.update(format="something-else"), "format is 'something-else'"),
        (lambda p: p.update(format_version=99), "format_version 99 is not supported"),
        (lambda p: p["config"].update(d_model="wide"), "bad config: config field d_model must be int"),
        (lambda p: p["config"].update(colour="red"), "bad config: config has unknown fields: colour"),
        (lambda p: p["config"].update(n_layers=3), "missing blocks.2"),
        (lambda p: p["config"].update(n_layers=1), "unexpected blocks.1"),
        (lambda p: p["config"].update(d_ffn=65), r"has shape \(64, 32\), the config implies \(65, 32\)"),
        (lambda p: p["config"].update(num_features=16), r"phi.w_tilde has shape \(2, 8, 16\), the config implies \(2, 16, 16\)"),
        (lambda p: p["state_dict"].pop("ln_f.weight"), "missing ln_f.weight"),
        (lambda p: p["state_dict"].update(extra=torch.zeros(1)), "unexpected extra"),
        (lambda p: p["state_dict"].update({"ln_f.bias": torch.zeros(31)}), r"ln_f.bias has shape \(31,\)"),
        (lambda p: p["state_dict"].update({"ln_f.bias": torch.full((32,), float("nan"))}), "NaN"),
        (lambda p: p["state_dict"].update({"ln_f.bias": torch.zeros(32, dtype=torch.int64)}), "floating-point"),
        (lambda p: p.update(state_dict=[1, 2]), "state_dict must map names to tensors"),
    ],
)
def test_bad_contents_are_named(ckpt, mutate, message):
    _, path = ckpt
    _rewrite(path, mutate)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="top level is list"):
        load_checkpoint(path)


def test_zip_without_torch_contents(tmp_path):
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(path)
