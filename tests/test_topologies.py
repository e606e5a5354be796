"""fcache and dcache on every topology: Cluster, Sentinel (with failover), TLS, ACL users."""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import redis_cache
from redis_cache import exceptions
from redis_cache.interfaces import DeterministicCache, FastCache
from redis_cache.layers import EntryKey
from tests.support.helpers import (
    DELAY_ENV,
    LEDGER_ENV,
    compile_tagged,
    computations,
    dcache_each_worker,
    make_settings,
    rich_value,
)
from tests.support.servers import RedisClusterHandle, RedisServer, SentinelHandle, TLSMaterial

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]


def kernel(x: int) -> Any:
    return rich_value(x)


def machine(tmp: Path, name: str, cls: Any = FastCache, **overrides: Any) -> Any:
    if cls is DeterministicCache:
        overrides = {"deterministic": True, "determinism": "global", **overrides}
    return cls(make_settings(tmp / name, **overrides))


# --------------------------------------------------------------------------- cluster


def test_cluster_shares_entries_and_single_flights(
    tmp_path: Path, redis_cluster: RedisClusterHandle, namespace: str
) -> None:
    common = {"url": redis_cluster.url, "cluster": True, "namespace": namespace}
    a = machine(tmp_path, "a", **common)
    b = machine(tmp_path, "b", **common)
    recorded_a = a.record()(kernel)
    assert [recorded_a(i) for i in range(20)] == [rich_value(i) for i in range(20)]
    recorded_b = b.record()(kernel)
    assert [recorded_b(i) for i in range(20)] == [rich_value(i) for i in range(20)]
    assert b.stats().remote_hits == 20  # entries spread over all three masters
    keys = [a.entry_key(kernel, ((i,), {}))
            for i in range(20)]
    assert all(v is not None for v in b._runtime().redis.get_many(keys))

    calls: list[int] = []
    barrier = threading.Barrier(6)

    def slow(x: int) -> str:
        calls.append(x)
        time.sleep(0.2)
        return f"computed-{x}"

    dcaches = [machine(tmp_path, f"d{i}", DeterministicCache, **common) for i in range(6)]
    results: list[str] = []

    def worker(d: DeterministicCache) -> None:
        barrier.wait()
        results.append(d.record()(slow)(7))

    threads = [threading.Thread(target=worker, args=(d,)) for d in dcaches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [7]
    assert results == ["computed-7"] * 6
    for cache in [a, b, *dcaches]:
        cache.close()


# --------------------------------------------------------------------------- sentinel


def test_sentinel_writes_to_the_primary_and_survives_failover(
    tmp_path: Path, redis_sentinel: SentinelHandle
) -> None:
    common = {
        "url": "redis://",
        "sentinels": tuple(redis_sentinel.sentinels),
        "sentinel_master": redis_sentinel.master_name,
        "breaker_cooldown": 0.05,
        "breaker_max_cooldown": 0.2,
        "retry_deadline": 20.0,
        "socket_timeout": 1.0,
        "connect_timeout": 0.5,
    }
    f = machine(tmp_path, "f", **common)
    d = machine(tmp_path, "d", DeterministicCache, **common)
    assert f.insert(kernel, ((1,), {}), "before") is True
    assert d.record()(kernel)(2) == rich_value(2)
    old_primary = redis_sentinel.primary
    assert old_primary.client().dbsize() >= 2  # written to the primary

    redis_sentinel.failover()
    new_primary = redis_sentinel.primary
    assert new_primary.port != old_primary.port

    # fcache never raises; once the client follows the new primary, writes land there.
    recorded = f.record()(kernel)
    for i in range(100, 400):
        recorded(i)
        if new_primary.client().exists(f._runtime().redis.value_key(
            f.entry_key(kernel, ((i,), {}))
        )):
            break
        time.sleep(0.02)
    else:
        pytest.fail("fcache never wrote to the new primary after failover")
    # dcache retries transient failover errors within its deadline and synchronizes.
    assert d.record()(kernel)(3) == rich_value(3)
    assert d.get(kernel, ((2,), {})) == redis_cache.Hit(rich_value(2))  # replicated entry kept
    f.close()
    d.close()


# --------------------------------------------------------------------------- TLS


def test_tls_with_a_verified_server_certificate(
    tmp_path: Path, tls_redis_server: RedisServer, tls_material: TLSMaterial, namespace: str
) -> None:
    common = {"url": tls_redis_server.url, "namespace": namespace,
              "tls_ca_file": str(tls_material.ca_cert)}
    assert common["url"].startswith("rediss://")
    a, b = machine(tmp_path, "a", **common), machine(tmp_path, "b", **common)
    a.record()(kernel)(1)
    assert b.record()(kernel)(1) == rich_value(1)
    assert b.stats().remote_hits == 1
    with_cert = machine(tmp_path, "c", tls_cert_file=str(tls_material.client_cert),
                        tls_key_file=str(tls_material.client_key), **common)
    assert with_cert.get(kernel, ((1,), {})) == redis_cache.Hit(rich_value(1))
    for cache in (a, b, with_cert):
        cache.close()


def test_tls_without_the_ca_fails_open_for_fcache(
    tmp_path: Path, tls_redis_server: RedisServer, namespace: str
) -> None:
    f = machine(tmp_path, "f", url=tls_redis_server.url, namespace=namespace)
    assert f.record()(kernel)(1) == rich_value(1)  # served locally
    assert f.stats().remote_errors == 1
    f.close()


# --------------------------------------------------------------------------- ACL


WORKER_COMMANDS = (
    "+get +set +del +exists +eval +evalsha +script|load +pexpire +pttl +incr +rpush +blpop "
    "+lpush +info +ping +client|setname +wait +scan +hincrby +hincrbyfloat +expire +unlink"
)


@pytest.fixture(scope="module")
def acl_server() -> Any:
    with RedisServer(
        config=["maxmemory-policy noeviction"],
        acl=[f"worker on >worker-pw-123 ~redis_cache:v2:team-a:* resetchannels {WORKER_COMMANDS}"],
    ) as server:
        yield server


def test_acl_user_confined_to_its_namespace(tmp_path: Path, acl_server: RedisServer) -> None:
    url = f"redis://worker:worker-pw-123@127.0.0.1:{acl_server.port}/0"
    f = machine(tmp_path, "f", url=url, namespace="team-a")
    d = machine(tmp_path, "d", DeterministicCache, url=url, namespace="team-a")
    assert f.record()(kernel)(1) == rich_value(1)
    assert d.record()(kernel)(2) == rich_value(2)
    assert f.stats().remote_errors == 0 and d.stats().remote_errors == 0
    assert acl_server.client().dbsize() >= 2

    # Outside the pattern: fcache fails open, dcache fails closed at once (not retryable).
    outside_f = machine(tmp_path, "of", url=url, namespace="team-b")
    assert outside_f.record()(kernel)(3) == rich_value(3)
    assert outside_f.stats().remote_errors == 1
    outside_d = machine(tmp_path, "od", DeterministicCache, url=url, namespace="team-b",
                        retry_deadline=30.0)
    started = time.monotonic()
    with pytest.raises(exceptions.RemoteUnavailableError) as info:
        outside_d.record()(kernel)(4)
    assert "NoPermission" in str(info.value) or "NOPERM" in str(info.value)
    assert "worker-pw-123" not in str(info.value)
    assert time.monotonic() - started < 30.0  # permanent errors are not retried to the deadline
    for cache in (f, d, outside_f, outside_d):
        cache.close()


def test_wrong_password_is_reported_without_the_password(
    tmp_path: Path, acl_server: RedisServer
) -> None:
    url = f"redis://worker:not-the-pw-987@127.0.0.1:{acl_server.port}/0"
    d = machine(tmp_path, "d", DeterministicCache, url=url, namespace="team-a")
    with pytest.raises(exceptions.RemoteUnavailableError) as info:
        d.get(kernel, ((1,), {}))
    assert "not-the-pw-987" not in str(info.value)
    assert "Authentication" in str(info.value)


def test_entry_keys_stay_in_the_namespace_pattern(tmp_path: Path) -> None:
    layer = machine(tmp_path, "x", url="redis://h:1/0", namespace="team-a")._runtime().redis
    keys = layer.entry_keys(EntryKey("m.f", "0" * 64, "fcache"))
    for key in (keys.value, keys.lock, keys.fence, keys.signal):
        assert key.startswith("redis_cache:v2:team-a:")


# --------------------------------------------------------------------------- issue 9 regressions

SPAWN = multiprocessing.get_context("spawn")
FAILOVER_KEYS = 300
FAILOVER_WORKERS = 4


def _wait(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.05)


def test_item20_min_replicas_survives_a_failover_with_a_stalled_replica(
    tmp_path: Path, redis_sentinel: SentinelHandle, monkeypatch: pytest.MonkeyPatch,
    namespace: str,
) -> None:
    """REDIS_CACHE_MIN_REPLICAS=1, replication stalled, then the primary is killed.

    The replica is SIGSTOPped (every WAIT falls short) and its link cut on the primary,
    so what the primary takes from then on exists nowhere else; 1.5 s later the primary
    is SIGKILLed and Sentinel promotes the replica. Four processes record 300 keys
    throughout: no two callers may get different values for a key, and no caller may
    return a value the new primary does not hold.
    """
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    env = {
        "REDIS_CACHE_SENTINELS": redis_sentinel.sentinels_env,
        "REDIS_CACHE_SENTINEL_MASTER": redis_sentinel.master_name,
        "REDIS_CACHE_NAMESPACE": namespace,
        "REDIS_CACHE_DETERMINISTIC": "1",
        "REDIS_CACHE_DETERMINISM": "global",
        "REDIS_CACHE_MIN_REPLICAS": "1",
        "REDIS_CACHE_RETRY_DEADLINE": "40",
        "REDIS_CACHE_SOCKET_TIMEOUT": "1.0",
        "REDIS_CACHE_CONNECT_TIMEOUT": "0.5",
        "REDIS_CACHE_LOCK_LEASE": "10",
        "REDIS_CACHE_LOCK_TIMEOUT": "120",
        "REDIS_CACHE_STATS_INTERVAL": "0",
        "REDIS_CACHE_DIR": str(tmp_path / "disk"),
        LEDGER_ENV: str(tmp_path / "ledger"),
        DELAY_ENV: "0.05",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ledger = tmp_path / "ledger"
    out, barrier = SPAWN.Queue(), SPAWN.Barrier(FAILOVER_WORKERS)
    keys = list(range(FAILOVER_KEYS))
    procs = []
    for seed in range(FAILOVER_WORKERS):
        order = keys[:]
        random.Random(seed).shuffle(order)
        procs.append(
            SPAWN.Process(target=dcache_each_worker, args=("compile_tagged", order, barrier, out))
        )
    for p in procs:
        p.start()
    old_primary, replica = redis_sentinel.primary, redis_sentinel.replica
    stalled = False
    try:
        _wait("40 computations", lambda: len(computations(ledger)) >= 40, 120)
        replica.pause()  # every WAIT falls short from now on
        stalled = True
        with old_primary.client() as client:  # and what the primary takes stays there
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        time.sleep(1.5)
        computed_before_the_kill = len(computations(ledger))
        old_primary.kill()
        replica.resume()
        stalled = False
        _wait(
            "the replica's promotion",
            lambda: replica.role() == "master"
            and all(redis_sentinel.master_address(s) == replica.address
                    for s in redis_sentinel.sentinel_servers),
            60,
        )  # fmt: skip
        # The old primary comes back as a replica of the new one: WAIT can succeed again.
        old_primary.restart()
        with old_primary.client() as client:
            client.execute_command("REPLICAOF", replica.host, str(replica.port))
        _wait(
            "the old primary to replicate the new one",
            lambda: old_primary.info("replication").get("master_link_status") == "up",
            60,
        )
        redis_sentinel.primary, redis_sentinel.replica = replica, old_primary
        reports = [out.get(timeout=240) for _ in procs]
    finally:
        if stalled:
            replica.resume()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    # Read what the new primary holds, as any later machine would.
    reader = DeterministicCache(
        make_settings(tmp_path / "reader", sentinels=tuple(redis_sentinel.sentinels),
                      sentinel_master=redis_sentinel.master_name, namespace=namespace,
                      deterministic=True, determinism="global", stats_interval=0)
    )  # fmt: skip
    returned: dict[int, set[str]] = {}
    errors: list[str] = []
    for r in reports:
        for x, (kind, value) in r["report"].items():
            if kind == "value":
                returned.setdefault(x, set()).add(value)
            else:
                errors.append(value)
    held = {x: reader.get(compile_tagged, ((x,), {})) for x in returned}
    reader.close()
    diverged = {x: values for x, values in returned.items() if len(values) > 1}
    unheld = {
        x: (values, None if held[x] is None else held[x].value)
        for x, values in returned.items()
        if held[x] is None or {held[x].value} != values
    }
    print(
        f"\nfailover with a stalled replica: {len(returned)} keys returned, "
        f"{len(errors)} errors, {computed_before_the_kill} computed before the kill, "
        f"{len(computations(ledger))} in all"
    )
    assert not diverged, f"one key, several values: {diverged}"
    assert not unheld, f"returned, but not what the new primary holds: {unheld}"
    assert all(e.startswith(("RemoteError", "RemoteUnavailableError")) for e in errors), errors
    assert len(returned) == FAILOVER_KEYS, f"only {len(returned)} keys returned: {errors[:5]}"
