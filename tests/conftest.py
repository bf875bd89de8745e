import os

import pytest
import torch


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # the workers share the cores: torch's own threads would only spin against each other
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    config.addinivalue_line("markers", "gpu: needs a CUDA device (runs on the H200, not in CI)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    """RFA_TEST_SHARD=i/n keeps every n-th test from the i-th (helpers.shard_items), so that a long run, such as a
    sanitizer over a GPU test file, can be split over calls of a per-command limit."""
    shard = os.environ.get("RFA_TEST_SHARD")
    if not shard:
        return
    from helpers import shard_items

    try:
        kept, deselected = shard_items(items, shard)
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    config.hook.pytest_deselected(items=deselected)
    items[:] = kept


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


BUNDLED = "examples/tiny_rfa.pt"


@pytest.fixture(scope="session")
def bundled_export(tmp_path_factory):
    """The bundled model exported once (plugin lowering) for every test that only reads it."""
    from rfa_export.export import export_checkpoint

    out = tmp_path_factory.mktemp("bundled") / "out"
    export_checkpoint(BUNDLED, out)
    return out
