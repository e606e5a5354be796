"""Distributed single flight with real processes against real servers.

Assertions are about counts and equality; times are measured and printed (run
with ``-s`` to see them), never asserted.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_cache import exceptions
from redis_cache.interfaces import FastCache
from tests.support.helpers import (
    DELAY_ENV,
    LEDGER_ENV,
    computations,
    dcache_many_worker,
    dcache_worker,
    fcache_worker,
    make_settings,
)
from tests.support.servers import RedisClusterHandle, RedisServer, free_port

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def fleet_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, namespace: str
) -> Iterator[Path]:
    """Environment every spawned worker inherits: global determinism on the shared server."""
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_URL", redis_server.url)
    monkeypatch.setenv("REDIS_CACHE_NAMESPACE", namespace)
    monkeypatch.setenv("REDIS_CACHE_DETERMINISTIC", "1")
    monkeypatch.setenv("REDIS_CACHE_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    yield tmp_path / "ledger"


def start(fn: str, arg: Any, out: Any, *, barrier: Any = None, role: str = "") -> Any:
    proc = SPAWN.Process(target=dcache_worker, args=(fn, arg, barrier, out, role))
    proc.start()
    return proc


def collect(out: Any, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    return [out.get(timeout=timeout) for _ in range(n)]


def wait_for_lines(ledger: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(computations(ledger)) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"ledger never reached {n} computations: {computations(ledger)}")
        time.sleep(0.01)


def stampede(ledger: Path, n: int, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setenv(DELAY_ENV, "1.0")
    out = SPAWN.Queue()
    barrier = SPAWN.Barrier(n)
    procs = [start("compile_tagged", 1, out, barrier=barrier) for _ in range(n)]
    reports = collect(out, n)
    for p in procs:
        p.join(30)
    return reports


def test_sixteen_processes_stampeding_one_key(
    fleet_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = stampede(fleet_env, 16, monkeypatch)
    assert [r["error"] for r in reports] == [None] * 16
    assert len(computations(fleet_env)) == 1
    assert len({r["value"] for r in reports}) == 1
    writer = [r for r in reports if r["stats"]["computations"] == 1]
    assert len(writer) == 1
    last = max(r["returned_at"] for r in reports) - writer[0]["returned_at"]
    print(f"\nstampede of 16: last waiter returned {last * 1000:.1f} ms after the writer did")


def blocked_clients(server: RedisServer) -> int:
    return int(server.client().info("clients")["blocked_clients"])


def test_holder_killed_mid_compute_is_taken_over_once(
    fleet_env: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setenv("REDIS_CACHE_LOCK_LEASE", "1.0")
    monkeypatch.setenv(DELAY_ENV, "60")  # the first attempt never finishes by itself
    out = SPAWN.Queue()
    holder = start("compile_slow_first", 1, out, role="holder")
    wait_for_lines(fleet_env, 1)
    already_blocked = blocked_clients(redis_server)  # other tests' waiters, if any
    waiters = [start("compile_slow_first", 1, out, role="waiter") for _ in range(4)]
    # The waiters block on the lock while the holder keeps renewing it; however long
    # they take to start (a fresh process importing torch takes seconds), kill the
    # holder only once all four are waiting, so each saw it hold the lock.
    deadline = time.monotonic() + 60
    while blocked_clients(redis_server) < already_blocked + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    reports = collect(out, 4)
    for p in waiters:
        p.join(30)
    assert [r["error"] for r in reports] == [None] * 4
    assert len({r["value"] for r in reports}) == 1
    assert len(computations(fleet_env)) == 2  # the killed attempt and one takeover
    assert sum(r["stats"]["computations"] for r in reports) == 1
    assert sum(r["stats"]["takeovers"] for r in reports) >= 1


def test_holder_paused_past_its_lease_is_fenced_off(
    fleet_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CACHE_LOCK_LEASE", "0.5")
    monkeypatch.setenv(DELAY_ENV, "2.0")
    out = SPAWN.Queue()
    paused = start("compile_tagged", 1, out, role="paused")
    wait_for_lines(fleet_env, 1)
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        winner = start("compile_tagged", 1, out, role="winner")
        wait_for_lines(fleet_env, 2)  # the winner took over and computes now
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    reports = {r["role"]: r for r in collect(out, 2)}
    for p in (paused, winner):
        p.join(30)
    assert reports["paused"]["error"] is None and reports["winner"]["error"] is None
    # The paused holder's write lost: it returns the winner's value.
    assert reports["paused"]["value"] == reports["winner"]["value"]
    assert f"@{winner.pid}@" in reports["winner"]["value"]
    stats = reports["paused"]["stats"]
    assert stats["fencing_rejections"] + stats["insert_conflicts"] == 1
    print(f"\npaused holder: fencing rejections {stats['fencing_rejections']}")


def test_fn_raising_releases_at_once_and_the_next_waiter_computes(
    fleet_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CACHE_LOCK_LEASE", "30")  # a release, not an expiry, must wake them
    monkeypatch.setenv(DELAY_ENV, "0.5")
    out = SPAWN.Queue()
    first = start("compile_failing_first", 1, out, role="first")
    wait_for_lines(fleet_env, 1)
    others = [start("compile_failing_first", 1, out, role="other") for _ in range(3)]
    reports = collect(out, 4, timeout=20)  # well under the 30 s lease
    for p in (first, *others):
        p.join(30)
    by_role = {r["role"]: r for r in reports if r["role"] == "first"}
    assert by_role["first"]["error"] == "RuntimeError: compiler crashed"
    rest = [r for r in reports if r["role"] == "other"]
    assert [r["error"] for r in rest] == [None] * 3
    assert len({r["value"] for r in rest}) == 1
    assert len(computations(fleet_env)) == 2


def test_lock_timeout_names_the_key_and_the_wait(
    fleet_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DELAY_ENV, "5")
    out = SPAWN.Queue()
    holder = start("compile_tagged", 1, out, role="holder")
    wait_for_lines(fleet_env, 1)
    monkeypatch.setenv("REDIS_CACHE_LOCK_TIMEOUT", "0.5")
    impatient = start("compile_tagged", 1, out, role="impatient")
    reports = {r["role"]: r for r in collect(out, 2)}
    for p in (holder, impatient):
        p.join(30)
    error = reports["impatient"]["error"]
    assert error is not None and error.startswith("DistributedLockTimeoutError")
    assert ":lock" in error and "0.5" in error
    assert reports["holder"]["error"] is None


def test_stampede_on_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_cluster: RedisClusterHandle,
    namespace: str,
) -> None:
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_URL", redis_cluster.url)
    monkeypatch.setenv("REDIS_CACHE_CLUSTER", "1")
    monkeypatch.setenv("REDIS_CACHE_NAMESPACE", namespace)
    monkeypatch.setenv("REDIS_CACHE_DETERMINISTIC", "1")
    monkeypatch.setenv("REDIS_CACHE_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    reports = stampede(tmp_path / "ledger", 8, monkeypatch)
    assert [r["error"] for r in reports] == [None] * 8
    assert len(computations(tmp_path / "ledger")) == 1
    assert len({r["value"] for r in reports}) == 1


def test_thousands_of_keys_from_eight_processes(fleet_env: Path) -> None:
    keys = list(range(2000))
    out = SPAWN.Queue()
    procs = []
    for seed in range(8):
        order = keys[:]
        random.Random(seed).shuffle(order)
        procs.append(SPAWN.Process(target=dcache_many_worker, args=("compile_quick", order, out)))
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r == results[0] for r in results)  # every process saw the same value per key
    assert len(results[0]) == 2000
    assert len(computations(fleet_env)) == 2000  # each key computed exactly once


def fcache_stampede(n: int) -> list[dict[str, Any]]:
    out = SPAWN.Queue()
    barrier = SPAWN.Barrier(n)
    procs = [
        SPAWN.Process(target=fcache_worker, args=("compile_tagged", 1, barrier, out))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    reports = collect(out, n)
    for p in procs:
        p.join(30)
    return reports


def test_fcache_opt_in_single_flight(fleet_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_CACHE_DETERMINISTIC")
    monkeypatch.setenv("REDIS_CACHE_SINGLE_FLIGHT", "1")
    monkeypatch.setenv(DELAY_ENV, "1.0")
    reports = fcache_stampede(8)
    assert len(computations(fleet_env)) == 1
    assert len({r["value"] for r in reports}) == 1


def test_fcache_single_flight_fails_open_without_redis(
    fleet_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_CACHE_DETERMINISTIC")
    monkeypatch.setenv("REDIS_CACHE_SINGLE_FLIGHT", "1")
    monkeypatch.setenv("REDIS_CACHE_URL", f"redis://127.0.0.1:{free_port()}/0")
    reports = fcache_stampede(4)
    assert all(r["value"].startswith("1@") for r in reports)
    # Each process computed locally or found a neighbour's result on the shared disk.
    for r in reports:
        assert r["stats"]["computations"] + r["stats"]["disk_hits"] == 1
    assert sum(r["stats"]["remote_errors"] for r in reports) >= 1
    assert len(computations(fleet_env)) == sum(r["stats"]["computations"] for r in reports)


# --------------------------------------------------------------------------- issue 9 regressions


@pytest.mark.parametrize(
    "own_error",
    [
        exceptions.LockTimeoutError("a lock of the compiler's own", 5.0),
        exceptions.RemoteUnavailableError("the compiler's own artifact server is down"),
        exceptions.ValueTooLargeError("the compiler's own size limit"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_item11_fcache_single_flight_lets_the_functions_own_errors_propagate(
    tmp_path: Path, redis_server: RedisServer, namespace: str, own_error: Exception
) -> None:
    """Only the library's own lock may fall back to computing locally: fn runs once."""
    cache = FastCache(
        make_settings(tmp_path, url=redis_server.url, namespace=namespace, single_flight=True,
                      stats_interval=0)
    )  # fmt: skip
    calls: list[int] = []

    @cache.record()
    def compile_with_its_own_failure(x: int) -> int:
        calls.append(x)
        raise own_error

    with pytest.raises(type(own_error)) as info:
        compile_with_its_own_failure(1)
    cache.close()
    assert info.value is own_error
    assert calls == [1], f"fn ran {len(calls)} times"
