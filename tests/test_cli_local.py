"""``redis-cache stats --local`` and ``prune``: this machine's disk layer, as real processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from redis_cache.layers import DiskLayer
from tests.test_cli_ops import CALLEE, clean_env, record, run_cli
from tests.test_prune import BLOCK, item, key


@pytest.fixture
def env(tmp_cache_dir: Path) -> dict[str, str]:
    return clean_env(REDIS_CACHE_DIR=str(tmp_cache_dir), REDIS_CACHE_NAMESPACE="local-ns")


def test_stats_local_counts_entries_per_callee_without_a_server(env: dict[str, str]) -> None:
    record(env, "fcache", 3)
    record(env, "fcache", 2, "compile_tagged")
    record({**env, "REDIS_CACHE_DETERMINISTIC": "1"}, "dcache", 1)
    done = run_cli("stats", "--local", "--json", env=env)
    assert done.returncode == 0, done.stderr
    local = json.loads(done.stdout)["local"]
    assert local["entries"] == 6
    assert local["spaces"]["fcache"]["entries"] == 5 and local["spaces"]["dcache"]["entries"] == 1
    assert local["callees"][CALLEE]["entries"] == 4
    assert local["callees"]["tests.support.helpers.compile_tagged"]["entries"] == 2
    assert 0 < local["bytes"] <= local["disk_bytes"]
    # Without REDIS_CACHE_URL, plain `stats` has only the local view to show.
    text = run_cli("stats", env=env)
    assert text.returncode == 0, text.stderr
    assert "6 entries" in text.stdout and CALLEE in text.stdout
    assert "REDIS_CACHE_URL is not set" in text.stdout


def _aged_layer(env: dict[str, str], n: int) -> DiskLayer:
    layer = DiskLayer(Path(env["REDIS_CACHE_DIR"]), env["REDIS_CACHE_NAMESPACE"])
    for i in range(n):
        layer.insert(key(i), item(i))
        then = time.time() - 3600 - 60 * (n - i)
        os.utime(layer.path(key(i)), (then, then))
    return layer


def test_prune_dry_run_then_prune(env: dict[str, str]) -> None:
    layer = _aged_layer(env, 10)
    dry = run_cli("prune", "--dry-run", "--max-bytes", "20K", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["entries"] == 10
    assert (report["removed"], report["bytes_after"]) == (6, 4 * BLOCK)
    assert all(os.path.exists(layer.path(key(i))) for i in range(10))  # get() would touch
    # The bound from the environment; the oldest six go.
    done = run_cli("prune", env={**env, "REDIS_CACHE_DISK_MAX_BYTES": str(5 * BLOCK)})
    assert done.returncode == 0, done.stderr
    assert "removed 6 least recently used entries" in done.stdout
    assert [i for i in range(10) if os.path.exists(layer.path(key(i)))] == [6, 7, 8, 9]


def test_prune_refuses_without_a_bound_and_bad_sizes(env: dict[str, str]) -> None:
    for args in (("prune",), ("prune", "--max-bytes", "ten")):
        done = run_cli(*args, env=env)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
    bad = run_cli("prune", env={**env, "REDIS_CACHE_DISK_MAX_BYTES": "-1"})
    assert bad.returncode == 2 and "REDIS_CACHE_DISK_MAX_BYTES" in bad.stderr
