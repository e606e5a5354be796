"""The Redis layer: the layer contract on fakeredis and on a real server (bare, and inside
the FailOpen and Retrying wrappers), key layout, batches, and the wrappers' failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from redis_cache import exceptions
from redis_cache.breaker import CircuitBreaker
from redis_cache.connection import ClientProvider
from redis_cache.layers import EntryKey, Outcome
from redis_cache.layers.guards import FailOpen, Retrying
from redis_cache.layers.redis import RedisLayer, namespace_prefix
from redis_cache.retry import Retrier
from redis_cache.stats import StatsRecorder
from tests.support.helpers import make_settings
from tests.support.proxy import FaultProxy
from tests.support.servers import RedisServer, free_port
from tests.test_layer_contract import LayerContract, key


def fake_layer(tmp_path: Path, namespace: str = "ns", server: Any = None) -> RedisLayer:
    server = server or fakeredis.FakeServer()
    settings = make_settings(tmp_path, url="redis://fake:1/0", namespace=namespace)
    return RedisLayer(
        settings, ClientProvider(settings, lambda s: fakeredis.FakeRedis(server=server))
    )


class TestRedisLayerOnFakeredis(LayerContract):
    @pytest.fixture
    def layer(self, tmp_path: Path) -> RedisLayer:
        return fake_layer(tmp_path)

    def item(self, i: int) -> bytes:
        return f"blob-{i}".encode() * (i + 1)


@pytest.mark.real_redis
class TestRedisLayerOnRealServer(LayerContract):
    @pytest.fixture
    def layer(
        self, tmp_path: Path, redis_server: RedisServer, namespace: str
    ) -> Iterator[RedisLayer]:
        layer = RedisLayer(make_settings(tmp_path, url=redis_server.url, namespace=namespace))
        yield layer
        layer.close()

    def item(self, i: int) -> bytes:
        return f"blob-{i}".encode() * (i + 1)

    def test_prefetch_many_keys_in_one_pipeline(self, layer: RedisLayer) -> None:
        keys = [key(i) for i in range(1000)]
        for k in keys[::2]:
            layer.insert(k, k.digest.encode())
        values = layer.get_many(keys)
        assert values[::2] == [k.digest.encode() for k in keys[::2]]
        assert values[1::2] == [None] * 500

    def test_ttl_applies_when_asked(self, layer: RedisLayer, redis_server: RedisServer) -> None:
        short_lived = RedisLayer(layer.settings, ttl=100)
        short_lived.insert(key(1), b"short-lived")
        layer.insert(key(2), b"forever")
        client = redis_server.client()
        assert 0 < client.ttl(layer.value_key(key(1))) <= 100
        assert client.ttl(layer.value_key(key(2))) == -1
        short_lived.close()


def test_entry_keys_share_one_hash_tag_and_hold_no_raw_arguments(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, namespace="team-a")
    k = EntryKey("pkg.mod.Kernel.compile", "ab" * 32, "fcache")
    keys = layer.entry_keys(k)
    tag = "{" + k.digest + "}"
    for name in (keys.value, keys.lock, keys.fence, keys.signal):
        assert name.startswith(namespace_prefix("team-a"))
        assert name.count("{") == 1 and tag in name
    assert keys.value == "redis_cache:v2:team-a:fcache:pkg.mod.Kernel.compile:{" + k.digest + "}"


def test_braces_in_a_callee_cannot_move_the_hash_tag(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path)
    value = layer.value_key(EntryKey("weird.{name}", "cd" * 32, "fcache"))
    assert value.count("{") == 1
    assert value.endswith("{" + "cd" * 32 + "}")


def test_namespaces_isolate(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    a = fake_layer(tmp_path, "a", server)
    b = fake_layer(tmp_path, "b", server)
    a.insert(key(), b"x")
    assert b.get(key()) is None
    assert b.insert(key(), b"y") is Outcome.WRITTEN
    assert a.get(key()) == b"x"


def test_oversize_values_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, url="redis://fake:1/0", max_value_bytes=10)
    layer = RedisLayer(settings, ClientProvider(settings, lambda s: fakeredis.FakeRedis()))
    with pytest.raises(exceptions.ValueTooLargeError) as info:
        layer.insert(key(), b"x" * 11)
    assert "REDIS_CACHE_MAX_VALUE_BYTES=10" in str(info.value)
    assert layer.get(key()) is None


# --------------------------------------------------------------------------- the wrappers


@pytest.mark.real_redis
class TestFailOpenRedisLayerOnRealServer(LayerContract):
    """fcache's view of Redis keeps the contract while the server is healthy."""

    @pytest.fixture
    def layer(
        self, tmp_path: Path, redis_server: RedisServer, namespace: str
    ) -> Iterator[FailOpen]:
        raw = RedisLayer(make_settings(tmp_path, url=redis_server.url, namespace=namespace))
        yield FailOpen(raw, StatsRecorder(), breaker=CircuitBreaker(1.0, 30.0))
        raw.close()

    def item(self, i: int) -> bytes:
        return f"blob-{i}".encode() * (i + 1)


@pytest.mark.real_redis
class TestRetryingRedisLayerOnRealServer(LayerContract):
    """dcache's view of Redis keeps the contract while the server is healthy."""

    @pytest.fixture
    def layer(
        self, tmp_path: Path, redis_server: RedisServer, namespace: str
    ) -> Iterator[Retrying]:
        raw = RedisLayer(make_settings(tmp_path, url=redis_server.url, namespace=namespace))
        yield Retrying(raw, Retrier(5.0, stats=StatsRecorder()))
        raw.close()

    def item(self, i: int) -> bytes:
        return f"blob-{i}".encode() * (i + 1)


def dead_layer(tmp_path: Path) -> RedisLayer:
    return RedisLayer(
        make_settings(tmp_path, url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    )


@pytest.mark.real_redis
def test_fail_open_redis_turns_an_outage_into_misses_and_skips_while_open(
    tmp_path: Path,
) -> None:
    stats = StatsRecorder()
    breaker = CircuitBreaker(60.0, 60.0)
    down = FailOpen(dead_layer(tmp_path), stats, breaker=breaker)
    assert down.get(key(1)) is None
    assert breaker.is_open and stats.remote_errors == 1
    assert down.insert(key(1), b"x") is Outcome.UNAVAILABLE  # skipped: no second timeout
    assert down.get_many([key(1), key(2)]) == [None, None]
    assert down.discard(key(1), b"x") is False
    assert stats.remote_errors == 1 and stats.remote_skipped == 3


@pytest.mark.real_redis
def test_fail_open_redis_keeps_oversize_values_out_and_counts_them(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    stats = StatsRecorder()
    raw = RedisLayer(
        make_settings(tmp_path, url=redis_server.url, namespace=namespace, max_value_bytes=10)
    )
    layer = FailOpen(raw, stats, breaker=CircuitBreaker(1.0, 1.0))
    assert layer.insert(key(1), b"x" * 11) is Outcome.UNAVAILABLE
    assert stats.oversize_values == 1 and not layer.breaker.is_open  # type: ignore[union-attr]
    assert raw.get(key(1)) is None
    raw.close()


@pytest.mark.real_redis
def test_fail_open_read_only_consumers_never_repair(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    raw = RedisLayer(make_settings(tmp_path, url=redis_server.url, namespace=namespace))
    raw.insert(key(1), b"corrupt")
    reader = FailOpen(raw, StatsRecorder(), breaker=CircuitBreaker(1.0, 1.0), repairs=False)
    assert reader.discard(key(1), b"corrupt") is False
    assert raw.get(key(1)) == b"corrupt"
    raw.close()


@pytest.mark.real_redis
def test_retrying_redis_raises_once_its_deadline_is_spent(tmp_path: Path) -> None:
    stats = StatsRecorder()
    down = Retrying(dead_layer(tmp_path), Retrier(0.5, stats=stats))
    with pytest.raises(exceptions.RemoteError) as info:
        down.get(key(1))
    assert info.value.transient
    assert "gave up on GET" in str(info.value) and "REDIS_CACHE_RETRY_DEADLINE=0.5" in str(
        info.value
    )
    assert stats.remote_errors == 1


@pytest.mark.real_redis
def test_retrying_insert_recognizes_its_own_earlier_write(
    tmp_path: Path, redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SET NX landed but its reply was lost: the retry finds our bytes, WRITTEN."""
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        raw = RedisLayer(
            make_settings(tmp_path, url=proxy.url, namespace=namespace, socket_timeout=0.5)
        )
        layer = Retrying(raw, Retrier(10.0, stats=StatsRecorder()))
        assert layer.get(key(0)) is None  # connected
        original = redis.Redis.execute_command
        lost: list[Any] = []

        def execute_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
            if args[0] == "SET" and not lost:
                lost.append(args)
                proxy.half_open()  # the server runs SET NX; its reply never arrives
                try:
                    return original(self, *args, **options)
                finally:
                    proxy.pass_through()
            return original(self, *args, **options)

        monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
        assert layer.insert(key(1), b"ours") is Outcome.WRITTEN
        monkeypatch.undo()
        assert lost
        assert layer.insert(key(1), b"ours") is Outcome.EXISTED  # a later insert: not a retry
        raw.close()


def test_a_lease_never_blocks_longer_than_half_the_socket_timeout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, url="redis://fake:1/0", socket_timeout=1.0)
    layer = RedisLayer(settings, ClientProvider(settings, lambda s: fakeredis.FakeRedis()))
    lease = layer.lease(key(1))
    assert lease.max_block <= 0.5
    assert lease.keys == layer.entry_keys(key(1))
    assert lease.lease == settings.lock_lease
