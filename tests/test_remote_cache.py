"""fcache and dcache over a real Redis: sharing across machines, bad entries, faults.

"Machines" are cache instances (or processes) with separate disk directories.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis_cache
from redis_cache import exceptions
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import (
    LEDGER_ENV,
    computations,
    describe,
    exploit_envelope,
    make_settings,
    record_and_describe,
    rich_value,
)
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.real_redis

SPAWN = multiprocessing.get_context("spawn")


def kernel(x: int) -> tuple[int, str]:
    return (x, "kernel")


class Machines:
    """Factory of cache instances, each with its own disk directory, closed at teardown."""

    def __init__(self, tmp: Path, url: str, namespace: str) -> None:
        self.tmp, self.url, self.namespace = tmp, url, namespace
        self.made: list[CacheInterface] = []
        self.count = 0

    def fcache(self, **overrides: Any) -> FastCache:
        return self._make(FastCache, overrides)

    def dcache(self, **overrides: Any) -> DeterministicCache:
        overrides = {"deterministic": True, "determinism": "global", **overrides}
        return self._make(DeterministicCache, overrides)

    def _make(self, cls: Any, overrides: dict[str, Any]) -> Any:
        self.count += 1
        settings = make_settings(
            self.tmp / f"machine-{self.count}",
            **{"url": self.url, "namespace": self.namespace, **overrides},
        )
        cache = cls(settings)
        self.made.append(cache)
        return cache

    def close(self) -> None:
        for cache in self.made:
            cache.close()


@pytest.fixture
def machines(tmp_path: Path, redis_server: RedisServer, namespace: str) -> Iterator[Machines]:
    m = Machines(tmp_path, redis_server.url, namespace)
    yield m
    m.close()


def value_key(cache: CacheInterface, fn: Any, params: Any) -> str:
    backend = cache._runtime()
    key = cache.entry_key(fn, params)
    assert backend.redis is not None
    return backend.redis.value_key(key)


def key_id(cache: CacheInterface, fn: Any, params: Any) -> bytes:
    return cache.entry_key(fn, params).key_id


# --------------------------------------------------------------------------- sharing


def test_result_computed_on_one_machine_is_a_hit_on_another(machines: Machines) -> None:
    a, b = machines.fcache(), machines.fcache()
    calls: list[int] = []

    def compile_rich(x: int) -> Any:
        calls.append(x)
        return rich_value(x)

    assert a.record()(compile_rich)(3) == rich_value(3)
    hit = b.record()(compile_rich)(3)
    assert calls == [3]
    assert describe(hit) == describe(rich_value(3))  # exact types after the remote trip
    assert b.stats().remote_hits == 1
    b.close()  # flushes the disk backfill
    c = FastCache(b._explicit_settings)  # same disk as b, remote disabled by a dead URL
    assert c.get(compile_rich, ((3,), {})) is not None
    assert c.stats().disk_hits == 1
    c.close()


def test_processes_on_separate_machines_share_through_redis(
    tmp_path: Path, redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_URL", redis_server.url)
    monkeypatch.setenv("REDIS_CACHE_NAMESPACE", namespace)
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))
    described = []
    for machine in ("a", "b", "c"):
        monkeypatch.setenv("REDIS_CACHE_DIR", str(tmp_path / machine))
        with SPAWN.Pool(1) as pool:
            described.append(pool.apply(record_and_describe, ("fcache", "compile_rich", 11)))
    assert len(computations(tmp_path / "ledger")) == 1
    assert [stats["remote_hits"] for _, stats in described] == [0, 1, 1]
    assert described[0][0] == described[1][0] == described[2][0] == describe(rich_value(11))


def test_namespaces_isolate(machines: Machines) -> None:
    a = machines.fcache()
    b = machines.fcache(namespace=machines.namespace + "-other")
    a.insert(kernel, ((1,), {}), (1, "a"))
    assert b.get(kernel, ((1,), {})) is None


def test_ttl_on_fcache_entries_never_on_dcache_entries(
    machines: Machines, redis_server: RedisServer
) -> None:
    f = machines.fcache(ttl=600)
    f.insert(kernel, ((1,), {}), (1, "f"))
    d = machines.dcache(ttl=600)
    d.record()(kernel)(2)
    client = redis_server.client()
    assert 0 < client.ttl(value_key(f, kernel, ((1,), {}))) <= 600
    assert client.ttl(value_key(d, kernel, ((2,), {}))) == -1


def test_read_only_reads_but_never_writes(machines: Machines, redis_server: RedisServer) -> None:
    writer = machines.fcache()
    writer.insert(kernel, ((1,), {}), (1, "shared"))
    reader = machines.fcache(read_only=True)
    assert reader.get(kernel, ((1,), {})) == redis_cache.Hit((1, "shared"))
    assert reader.record()(kernel)(2) == (2, "kernel")
    assert redis_server.client().exists(value_key(reader, kernel, ((2,), {}))) == 0


# --------------------------------------------------------------------------- bad entries


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda good: b"not an envelope", id="garbage"),
        pytest.param(lambda good: good[: len(good) - 4], id="truncated"),
        pytest.param(lambda good: good[:2] + b"\x09" + good[3:], id="foreign-version"),
        pytest.param(lambda good: b"", id="empty"),
    ],
)
def test_bad_remote_entries_fcache_misses_and_repairs(
    machines: Machines, redis_server: RedisServer, damage: Any
) -> None:
    writer = machines.fcache()
    writer.insert(kernel, ((1,), {}), (1, "good"))
    vkey = value_key(writer, kernel, ((1,), {}))
    client = redis_server.client()
    client.set(vkey, damage(client.get(vkey)))

    reader = machines.fcache()
    assert reader.get(kernel, ((1,), {})) is None
    assert reader.stats().corrupt_entries == 1
    assert client.exists(vkey) == 0  # repaired
    assert reader.record()(kernel)(1) == (1, "kernel")
    assert client.exists(vkey) == 1


def test_bad_remote_entry_dcache_raises_naming_the_key(
    machines: Machines, redis_server: RedisServer
) -> None:
    d = machines.dcache()
    vkey = value_key(d, kernel, ((1,), {}))
    redis_server.client().set(vkey, b"RC\x01garbage")
    with pytest.raises(exceptions.ValueDecodingError) as info:
        d.record()(kernel)(1)
    assert vkey.split("{")[1].rstrip("}") in str(info.value)
    assert redis_server.client().get(vkey) == b"RC\x01garbage"  # dcache never repairs


def test_planted_pickle_is_never_executed(
    machines: Machines, redis_server: RedisServer, tmp_path: Path
) -> None:
    reader = machines.fcache()
    marker = tmp_path / "pwned"
    vkey = value_key(reader, kernel, ((1,), {}))
    redis_server.client().set(vkey, exploit_envelope(key_id(reader, kernel, ((1,), {})), marker))
    assert reader.get(kernel, ((1,), {})) is None
    assert not marker.exists()
    assert reader.stats().corrupt_entries == 1


def test_pickle_signed_with_another_secret_is_a_miss_and_left_alone(
    machines: Machines, redis_server: RedisServer, tmp_path: Path
) -> None:
    reader = machines.fcache(secret=b"ours-" * 8)
    marker = tmp_path / "pwned"
    vkey = value_key(reader, kernel, ((1,), {}))
    blob = exploit_envelope(key_id(reader, kernel, ((1,), {})), marker, signed_with=b"theirs-" * 8)
    redis_server.client().set(vkey, blob)
    assert reader.get(kernel, ((1,), {})) is None
    assert not marker.exists()
    assert reader.stats().unverified_entries == 1
    assert redis_server.client().get(vkey) == blob  # another fleet's entry: never deleted


def test_oversize_values_fcache_keeps_local_dcache_raises(
    machines: Machines, redis_server: RedisServer
) -> None:
    big = os.urandom(5000)

    def produce(x: int) -> bytes:
        return big

    f = machines.fcache(max_value_bytes=1000)
    assert f.record()(produce)(1) == big
    assert f.stats().oversize_values == 1
    assert redis_server.client().exists(value_key(f, produce, ((1,), {}))) == 0
    assert FastCache(f._explicit_settings).get(produce, ((1,), {})) == redis_cache.Hit(big)

    d = machines.dcache(max_value_bytes=1000)
    with pytest.raises(exceptions.ValueTooLargeError) as info:
        d.record()(produce)(2)
    assert "REDIS_CACHE_MAX_VALUE_BYTES=1000" in str(info.value)
    assert redis_server.client().exists(value_key(d, produce, ((2,), {})) + ":lock") == 0


# --------------------------------------------------------------------------- faults


def dead_url(password: str | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{free_port()}/0"


def test_fcache_with_server_down_at_start_serves_locally(tmp_path: Path) -> None:
    cache = FastCache(make_settings(tmp_path, url=dead_url(), breaker_cooldown=60))
    calls: list[int] = []

    @cache.record()
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert [f(1), f(2), f(1), f(3)] == [1, 2, 1, 3]
    assert calls == [1, 2, 3]
    stats = cache.stats()
    assert stats.remote_errors == 1  # one failure opened the breaker ...
    assert stats.remote_skipped >= 2  # ... which then skipped the dead server
    cache.close()


def test_fcache_survives_kill_and_reconnects_after_restart(
    tmp_path: Path, fresh_redis_server: RedisServer
) -> None:
    settings = make_settings(
        tmp_path,
        url=fresh_redis_server.url,
        breaker_cooldown=0.01,
        breaker_max_cooldown=0.05,
        connect_timeout=0.2,
        socket_timeout=0.5,
    )
    cache = FastCache(settings)
    wrapped = cache.record()(kernel)
    assert wrapped(1) == (1, "kernel")
    fresh_redis_server.kill()
    # Every call succeeds while the server is dead: served by memo and disk.
    assert [wrapped(i) for i in range(2, 30)] == [(i, "kernel") for i in range(2, 30)]
    assert cache.stats().remote_errors >= 1
    fresh_redis_server.restart()
    client = fresh_redis_server.client()
    # It reconnects by itself: new inserts reach the restarted server.
    for i in range(100, 600):
        wrapped(i)
        if client.dbsize() > 0:
            break
        time.sleep(0.01)
    assert client.dbsize() > 0
    cache.close()


def test_dcache_with_server_down_fails_closed_naming_the_server_not_the_password(
    tmp_path: Path,
) -> None:
    url = dead_url(password="hunter2-secret")
    cache = DeterministicCache(
        make_settings(
            tmp_path,
            url=url,
            deterministic=True,
            determinism="global",
            retry_deadline=0.3,
            connect_timeout=0.1,
        )
    )
    with pytest.raises(exceptions.SystemError) as info:
        cache.record()(kernel)(1)
    message = str(info.value)
    assert isinstance(info.value, exceptions.RemoteUnavailableError)
    assert url.split("@")[1].split("/")[0] in message  # host:port named
    assert "hunter2" not in message
    assert "attempts" in message


def test_dcache_killed_mid_run_never_returns_unsynchronized_results(
    tmp_path: Path, fresh_redis_server: RedisServer
) -> None:
    cache = DeterministicCache(
        make_settings(
            tmp_path,
            url=fresh_redis_server.url,
            deterministic=True,
            determinism="global",
            retry_deadline=0.3,
            connect_timeout=0.1,
        )
    )
    calls: list[int] = []

    @cache.record()
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(1) == 1
    fresh_redis_server.kill()
    assert f(1) == 1  # memo: it was synchronized
    with pytest.raises(exceptions.RemoteUnavailableError):
        f(2)
    assert calls == [1]  # nothing computed without the synchronization layer


def test_strong_consistency_is_required_for_global_determinism(tmp_path: Path) -> None:
    with RedisServer(config=["maxmemory-policy allkeys-lru"]) as server:
        cache = DeterministicCache(
            make_settings(tmp_path, url=server.url, deterministic=True, determinism="global")
        )
        with pytest.raises(exceptions.DeterministicCachingRequiresStrongConsistencyError) as info:
            cache.get(kernel, ((1,), {}))
        assert "allkeys-lru" in str(info.value)
        # fcache does not need it.
        assert FastCache(make_settings(tmp_path, url=server.url)).get(kernel, ((1,), {})) is None


def test_a_replica_is_not_a_synchronization_layer(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with RedisServer(config=[f"replicaof 127.0.0.1 {redis_server.port}"]) as replica:
        cache = DeterministicCache(
            make_settings(tmp_path, url=replica.url, deterministic=True, determinism="global")
        )
        with pytest.raises(exceptions.DeterministicCachingRequiresStrongConsistencyError) as info:
            cache.get(kernel, ((1,), {}))
        assert "replica" in str(info.value)


def test_read_only_consumers_report_corruption_but_never_repair(
    machines: Machines, redis_server: RedisServer
) -> None:
    writer = machines.fcache()
    writer.insert(kernel, ((1,), {}), (1, "good"))
    vkey = value_key(writer, kernel, ((1,), {}))
    redis_server.client().set(vkey, b"garbage")
    reader = machines.fcache(read_only=True)
    assert reader.get(kernel, ((1,), {})) is None
    assert reader.stats().corrupt_entries == 1
    assert reader.stats().remote_errors == 0
    assert redis_server.client().get(vkey) == b"garbage"


def test_a_client_that_cannot_be_built_fails_open_for_fcache(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, url="rediss://127.0.0.1:1/0", tls_ca_file=str(tmp_path / "missing-ca.pem")
    )
    cache = FastCache(settings)
    assert cache.record()(kernel)(1) == (1, "kernel")
    assert cache.stats().remote_errors == 1
    dcache = DeterministicCache(
        make_settings(tmp_path, url=settings.url, tls_ca_file=settings.tls_ca_file,
                      deterministic=True, determinism="global", retry_deadline=0.2)
    )
    with pytest.raises(exceptions.RemoteUnavailableError) as info:
        dcache.get(kernel, ((1,), {}))
    assert "missing-ca.pem" in str(info.value) or "CA" in str(info.value)


def test_fcache_and_dcache_entries_live_in_separate_key_spaces(machines: Machines) -> None:
    f = machines.fcache(ttl=60)
    f.insert(kernel, ((1,), {}), (1, "raced fcache value with a TTL"))
    d = machines.dcache()
    assert d.get(kernel, ((1,), {})) is None  # never adopts an evictable, raced entry
    assert d.record()(kernel)(1) == (1, "kernel")
    assert f.get(kernel, ((1,), {})) == redis_cache.Hit((1, "raced fcache value with a TTL"))


def test_min_replicas_waits_for_the_replica_and_fails_closed_without_it(
    tmp_path: Path, fresh_redis_server: RedisServer
) -> None:
    with RedisServer(config=[f"replicaof 127.0.0.1 {fresh_redis_server.port}"]) as replica:
        deadline = time.monotonic() + 10
        while "online" not in fresh_redis_server.info("replication").get("slave0", ""):
            assert time.monotonic() < deadline, "replica never came online"
            time.sleep(0.05)
        common = {"url": fresh_redis_server.url, "deterministic": True, "determinism": "global",
                  "min_replicas": 1, "socket_timeout": 0.5, "retry_deadline": 1.0}
        d = DeterministicCache(make_settings(tmp_path / "a", **common))
        assert d.record()(kernel)(1) == (1, "kernel")
        assert replica.client().exists(value_key(d, kernel, ((1,), {}))) == 1
        replica.pause()
        try:
            d2 = DeterministicCache(make_settings(tmp_path / "b", **common))
            with pytest.raises(exceptions.RemoteUnavailableError) as info:
                d2.record()(kernel)(2)
            assert "REDIS_CACHE_MIN_REPLICAS=1" in str(info.value)
        finally:
            replica.resume()


def test_single_flight_fcache_keeps_oversize_results_local(
    machines: Machines, redis_server: RedisServer
) -> None:
    big = os.urandom(4000)

    def produce(x: int) -> bytes:
        return big

    f = machines.fcache(single_flight=True, max_value_bytes=1000)
    assert f.record()(produce)(1) == big
    assert redis_server.client().exists(value_key(f, produce, ((1,), {}))) == 0
    assert f.record()(produce)(1) == big
    assert f.stats().computations == 1
