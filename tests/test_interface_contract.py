"""One contract, every interface: the same scenarios against fcache and dcache.

``flavour`` is parametrized over fcache on the local layers, fcache with a real
Redis below its disk, dcache under local determinism and dcache under global
determinism (real server). What differs between them is data on the flavour
(where an entry lives, what a corrupt entry does), never a branch in a scenario.
A "machine" is a disk directory: processes of one machine share it; with Redis,
each machine has its own and they share through the server.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import redis_cache
from redis_cache import exceptions
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import (
    LEDGER_ENV,
    compile_rich,
    computations,
    describe,
    make_settings,
    record_and_describe,
    rich_value,
)
from tests.support.servers import RedisServer

SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Flavour:
    name: str
    kind: str  # the singleton a spawned process uses: "fcache" or "dcache"
    root: Path
    server: RedisServer | None
    namespace: str
    bad_entry: str  # "repair" (a miss, recomputed) or "raise" (ValueDecodingError)
    caches: list[CacheInterface] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        return self.server is not None

    def machine_dir(self, machine: str) -> Path:
        # Without Redis, entries are shared through one machine's disk.
        return self.root / (machine if self.remote else "shared")

    def settings(self, machine: str) -> Any:
        overrides: dict[str, Any] = {"stats_interval": 0}
        if self.server is not None:
            overrides.update(url=self.server.url, namespace=self.namespace)
        if self.kind == "dcache":
            determinism = "global" if self.remote else "local"
            overrides.update(deterministic=True, determinism=determinism)
        return make_settings(self.machine_dir(machine), **overrides)

    def make(self, machine: str) -> CacheInterface:
        cls = DeterministicCache if self.kind == "dcache" else FastCache
        cache = cls(self.settings(machine))
        self.caches.append(cache)
        return cache

    def environment(self, machine: str) -> dict[str, str]:
        env = {"REDIS_CACHE_DIR": str(self.machine_dir(machine)), "REDIS_CACHE_STATS_INTERVAL": "0"}
        if self.server is not None:
            env.update(REDIS_CACHE_URL=self.server.url, REDIS_CACHE_NAMESPACE=self.namespace)
        if self.kind == "dcache":
            env.update(
                REDIS_CACHE_DETERMINISTIC="1",
                REDIS_CACHE_DETERMINISM="global" if self.remote else "local",
            )
        return env

    def corrupt(self, cache: CacheInterface, fn: Any, params: Any) -> None:
        """Truncate the stored entry in the layer every machine reads it from."""
        runtime = cache._runtime()
        key = cache.entry_key(fn, params)
        if runtime.redis is not None:
            assert self.server is not None
            client = self.server.client()
            name = runtime.redis.value_key(key)
            blob = client.get(name)
            assert blob is not None, "nothing stored in Redis"
            client.set(name, blob[:-3])
        else:
            path = Path(runtime.disk.path(key))
            path.write_bytes(path.read_bytes()[:-3])


FLAVOURS = ["fcache", "fcache+redis", "dcache-local", "dcache-global"]


@pytest.fixture(params=FLAVOURS)
def flavour(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Flavour]:
    name = request.param
    server: RedisServer | None = None
    if name in ("fcache+redis", "dcache-global"):
        server = request.getfixturevalue("redis_server")
    for var in list(os.environ):
        if var.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(var)
    flavour = Flavour(
        name=name,
        kind="dcache" if name.startswith("dcache") else "fcache",
        root=tmp_path,
        server=server,
        namespace=namespace,
        bad_entry="raise" if name.startswith("dcache") else "repair",
    )
    yield flavour
    for cache in flavour.caches:
        cache.close()


def counting(calls: list[Any], value: Callable[..., Any] = rich_value) -> Callable[..., Any]:
    def kernel(x: int, *, scale: int = 1, offset: int = 0) -> Any:
        calls.append((x, scale, offset))
        return value(x * scale + offset)

    return kernel


def hits(cache: CacheInterface) -> int:
    stats = cache.stats()
    return stats.disk_hits + stats.remote_hits


# --------------------------------------------------------------------------- scenarios


@pytest.mark.slow
def test_a_miss_in_one_process_is_a_hit_in_another(
    flavour: Flavour, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger"
    results = []
    for machine in ("a", "b"):
        for var, value in {**flavour.environment(machine), LEDGER_ENV: str(ledger)}.items():
            monkeypatch.setenv(var, value)
        with SPAWN.Pool(1) as pool:  # a fresh process, configured from the environment
            results.append(pool.apply(record_and_describe, (flavour.kind, "compile_rich", 7)))
    (first, first_stats), (second, second_stats) = results
    assert first == second == describe(rich_value(7))  # every type kept, in both processes
    assert len(computations(ledger)) == 1
    assert (first_stats["computations"], second_stats["computations"]) == (1, 0)
    assert second_stats["disk_hits"] + second_stats["remote_hits"] == 1


def test_insert_is_first_writer_wins(flavour: Flavour) -> None:
    a, b = flavour.make("a"), flavour.make("b")
    params = ((1,), {})
    assert a.insert(compile_rich, params, "first") is True
    assert a.insert(compile_rich, params, "second") is False
    assert a.get(compile_rich, params) == redis_cache.Hit("first")
    assert b.get(compile_rich, params) == redis_cache.Hit("first")  # another machine, cold
    assert b.insert(compile_rich, params, "third") is False
    assert flavour.make("c").get(compile_rich, params) == redis_cache.Hit("first")


def test_get_of_a_missing_key_is_none(flavour: Flavour) -> None:
    cache = flavour.make("a")
    assert cache.get(compile_rich, ((404,), {})) is None
    assert cache.stats().misses == 1
    assert cache.get_many(compile_rich, [((404,), {}), ((405,), {})]) == [None, None]


def test_record_with_custom_codecs_returns_what_every_hit_returns(flavour: Flavour) -> None:
    calls: list[Any] = []
    kernel = counting(calls, lambda x: x)

    def encode(result: int) -> dict[str, int]:
        return {"stored": result}

    def decode(stored: dict[str, int]) -> tuple[str, int]:
        return ("decoded", stored["stored"])

    a = flavour.make("a").record(custom_result_encoder=encode, custom_result_decoder=decode)(kernel)
    expected = ("decoded", 3)
    assert a(3) == expected  # the miss: decoder(encoder(result))
    assert a(3) == expected  # a memo hit
    b_cache = flavour.make("b")
    b = b_cache.record(custom_result_encoder=encode, custom_result_decoder=decode)(kernel)
    assert b(3) == expected  # a hit from the shared layer
    assert hits(b_cache) == 1
    assert calls == [(3, 1, 0)]
    assert b_cache.get(kernel, ((3,), {}), custom_result_decoder=decode) == redis_cache.Hit(
        expected
    )


def test_a_corrupt_entry_is_repaired_or_raises_by_interface(flavour: Flavour) -> None:
    calls: list[Any] = []
    kernel = counting(calls)
    writer = flavour.make("a")
    assert writer.record()(kernel)(5) == rich_value(5)
    flavour.corrupt(writer, kernel, ((5,), {}))
    reader = flavour.make("b")  # a cold memo: it reads the damaged entry
    if flavour.bad_entry == "repair":
        assert reader.record()(kernel)(5) == rich_value(5)  # a miss, recomputed
        assert reader.stats().corrupt_entries == 1
        assert len(calls) == 2
        third = flavour.make("c")
        assert third.get(kernel, ((5,), {})) == redis_cache.Hit(rich_value(5))  # repaired
        assert third.stats().corrupt_entries == 0
    else:
        key = reader.entry_key(kernel, ((5,), {}))
        with pytest.raises(exceptions.ValueDecodingError) as info:
            reader.record()(kernel)(5)
        assert key.digest in str(info.value)
        with pytest.raises(exceptions.ValueDecodingError):
            flavour.make("c").get(kernel, ((5,), {}))  # left in place for an operator
        assert len(calls) == 1


def test_keyword_argument_order_does_not_matter(flavour: Flavour) -> None:
    calls: list[Any] = []
    kernel = counting(calls)
    cache = flavour.make("a")
    recorded = cache.record()(kernel)
    assert recorded(2, scale=3, offset=1) == rich_value(7)
    assert recorded(2, offset=1, scale=3) == rich_value(7)
    assert calls == [(2, 3, 1)]
    other = flavour.make("b")
    assert other.get(kernel, ((2,), {"offset": 1, "scale": 3})) == redis_cache.Hit(rich_value(7))
    assert other.get(kernel, ((2,), {"offset": 3, "scale": 1})) is None  # other values


def test_close_then_reopen_replays_from_the_shared_layers(flavour: Flavour) -> None:
    calls: list[Any] = []
    kernel = counting(calls)
    cache = flavour.make("a")
    recorded = cache.record()(kernel)
    assert recorded(4) == rich_value(4)
    cache.close()  # drops the memo (and every wrapper's fast index) and the connections
    before = hits(cache)
    assert recorded(4) == rich_value(4)
    assert calls == [(4, 1, 0)]
    assert hits(cache) == before + 1  # served by the disk or Redis, not the memo
