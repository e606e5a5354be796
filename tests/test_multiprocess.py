"""The local layers across real processes: replay, type fidelity, hash seeds, stampedes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import (
    DELAY_ENV,
    LEDGER_ENV,
    computations,
    describe,
    record_and_describe,
    rich_value,
)

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
TESTS_DIR = Path(__file__).parent


@pytest.fixture
def farm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Environment every spawned worker inherits: one machine's disk, a computation ledger."""
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    return tmp_path / "ledger"


def test_record_in_one_process_replays_in_another(farm_env: Path) -> None:
    with SPAWN.Pool(1) as pool:
        first, first_stats = pool.apply(record_and_describe, ("fcache", "compile_rich", 7))
    with SPAWN.Pool(1) as pool:
        second, second_stats = pool.apply(record_and_describe, ("fcache", "compile_rich", 7))
    assert len(computations(farm_env)) == 1
    assert first_stats["computations"] == 1
    assert second_stats["disk_hits"] == 1
    assert second_stats["computations"] == 0
    # Same value with the same types in the replaying process.
    assert first == second == describe(rich_value(7))


def test_set_keys_are_identical_across_hash_seeds(farm_env: Path) -> None:
    script = (
        "import redis_cache, sys\n"
        "def kernel(options): return sorted(options)\n"
        "kernel.__module__ = 'farm'\n"
        "key = ({'alpha', 'beta', 'gamma', 'delta'}, frozenset({'x', 'y', 'z'}), {'k': {'v'}})\n"
        "if sys.argv[1] == 'insert':\n"
        "    print(redis_cache.fcache.insert(kernel, ((key,), {}), 'stored'))\n"
        "else:\n"
        "    hit = redis_cache.fcache.get(kernel, ((key,), {}))\n"
        "    print(hit.value if hit else 'MISS')\n"
    )
    outputs = []
    for seed, action in (("1", "insert"), ("2", "get"), ("3", "get")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, action],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.append(done.stdout.strip())
    assert outputs == ["True", "stored", "stored"]


def test_processes_racing_on_one_key_compute_once_under_local_determinism(
    farm_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CACHE_DETERMINISTIC", "1")
    monkeypatch.setenv(DELAY_ENV, "0.5")
    with SPAWN.Pool(8) as pool:
        results = pool.starmap(record_and_describe, [("dcache", "compile_tagged", 1)] * 8)
    values = {json.dumps(value) for value, _ in results}
    assert len(computations(farm_env)) == 1
    assert len(values) == 1  # every process got the first-written result
    assert sum(stats["computations"] for _, stats in results) == 1


def test_fcache_tolerates_races_but_keeps_one_disk_entry(farm_env: Path) -> None:
    with SPAWN.Pool(4) as pool:
        results = pool.starmap(record_and_describe, [("fcache", "compile_tagged", 2)] * 4)
    with SPAWN.Pool(1) as pool:
        replay, stats = pool.apply(record_and_describe, ("fcache", "compile_tagged", 2))
    assert stats["disk_hits"] == 1
    assert replay in [value for value, _ in results]


def test_import_never_fails_on_bad_settings_and_first_use_names_the_variable(
    farm_env: Path,
) -> None:
    script = (
        "import redis_cache\n"
        "try:\n"
        "    redis_cache.fcache.get(len, (('x',), {}))\n"
        "except redis_cache.UserError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {
        **os.environ,
        "REDIS_CACHE_LOCK_TIMEOUT": "soon",
        "REDIS_CACHE_URL": "redis://u:hunter2@nowhere:1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "REDIS_CACHE_LOCK_TIMEOUT" in done.stdout
    assert "'soon'" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr
