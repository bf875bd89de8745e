"""RFA_TEST_SHARD (tests/conftest.py): the shards of a collection are disjoint and together are all of it."""

import os
import re
import subprocess
import sys

import pytest

from helpers import shard_items

TARGET = "tests/test_state_dtype.py"


def _collected(shard):
    env = {k: v for k, v in os.environ.items() if k != "RFA_TEST_SHARD"}
    if shard is not None:
        env["RFA_TEST_SHARD"] = shard
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", TARGET],
                         capture_output=True, text=True, env=env)
    return run.returncode, [line for line in run.stdout.splitlines() if "::" in line], run.stdout + run.stderr


def test_shards_partition_the_collection():
    rc, whole, _ = _collected(None)
    assert rc == 0 and len(whole) >= 3
    shards = [_collected(f"{i}/2") for i in range(2)]
    assert all(rc == 0 for rc, _, _ in shards)
    assert [ids for _, ids, _ in shards] == [whole[0::2], whole[1::2]]


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "a/2", "1"])
def test_a_malformed_shard_is_refused(shard):
    with pytest.raises(ValueError, match=re.escape(f"RFA_TEST_SHARD={shard!r}")):
        shard_items(list(range(5)), shard)


def test_a_malformed_shard_is_a_usage_error():
    rc, _, output = _collected("3/2")
    assert rc == 4 and "RFA_TEST_SHARD='3/2'" in output
