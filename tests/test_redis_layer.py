"""The Redis layer: the layer contract on fakeredis and on a real server, key layout, batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from redis_cache import exceptions
from redis_cache.connection import ClientProvider
from redis_cache.layers import EntryKey, Outcome
from redis_cache.layers.redis import RedisLayer, namespace_prefix
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer
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
