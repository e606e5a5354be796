"""The Redis layer against raw redis-py on the same server, measured in one run.

    python bench/bench_remote.py

Starts its own redis-server on a free port (tests/servers.py). Targets (issue:
Redis layer): remote hit (memo and disk cold) <= 1.4x a raw GET of the same
payload; fcache miss+insert <= 2.5x raw GET + SET NX; prefetch of 1,000 keys
>= 10x faster than 1,000 single gets; a 32 MiB value round trip <= 1.5x raw
SET + GET of the same bytes.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from common import Timing, report, save, time_per_call  # noqa: E402
from servers import RedisServer  # noqa: E402

from redis_cache import context  # noqa: E402
from redis_cache.config import Settings  # noqa: E402
from redis_cache.interfaces import FastCache  # noqa: E402
from redis_cache.layers import EntryKey  # noqa: E402

PAYLOADS = {"100B": 100, "10KiB": 10 * 1024, "1MiB": 1024 * 1024}


def kernel(label: str, i: int) -> bytes:
    return b""  # never called: the benchmark inserts and reads values directly


def cache_for(url: str, namespace: str, **kw: Any) -> FastCache:
    return FastCache(Settings(dir=Path(tempfile.mkdtemp()), url=url, namespace=namespace, **kw))


def cold_reader(url: str, namespace: str) -> FastCache:
    """A reader whose memo is cleared per call and whose disk is never backfilled."""
    reader = cache_for(url, namespace)
    backend = reader._backend()
    backend.backfill_disk = lambda key, blob: None  # type: ignore[method-assign]
    return reader


def remote_hit_rows(server: RedisServer) -> list[tuple[Timing, Timing, float]]:
    rows = []
    raw = server.client()
    for label, size in PAYLOADS.items():
        value = os.urandom(size)
        writer = cache_for(server.url, "bench-hit")
        writer.insert(kernel, ((label, 0), {}), value)
        reader = cold_reader(server.url, "bench-hit")
        backend = reader._backend()
        key = reader._key(kernel, ((label, 0), {}), context.isolation_key(None), None)
        assert backend.redis is not None
        vkey = backend.redis.value_key(key)
        raw.set(f"raw:{label}", raw.get(vkey))  # raw GET moves the same bytes

        def hit(reader: FastCache = reader, label: str = label) -> object:
            reader._backend().memo.clear()
            return reader.get(kernel, ((label, 0), {}))

        number = 3000 if size < 1_000_000 else 200
        base = time_per_call(f"raw GET {label}", lambda k=f"raw:{label}": raw.get(k), number=number)
        ours = time_per_call(f"fcache.get remote hit {label}", hit, number=number)
        rows.append((ours, base, 1.4))
        writer.close()
        reader.close()
    return rows


def miss_insert_rows(server: RedisServer) -> list[tuple[Timing, Timing, float]]:
    rows = []
    raw = server.client()
    for label, size in PAYLOADS.items():
        value = os.urandom(size)
        cache = cache_for(server.url, f"bench-miss-{label}")
        counter = itertools.count()

        def produce(i: int, value: bytes = value) -> bytes:
            return value

        recorded = cache.record()(produce)
        raw_counter = itertools.count()

        def raw_miss_insert(value: bytes = value, c: Any = raw_counter) -> None:
            k = f"rawmiss:{label}:{next(c)}"
            raw.get(k)
            raw.set(k, value, nx=True)

        def our_miss_insert(recorded: Any = recorded, c: Any = counter) -> None:
            recorded(next(c))

        number = 1000 if size < 1_000_000 else 50
        base = time_per_call(f"raw GET + SET NX {label}", raw_miss_insert, number=number, repeat=5)
        ours = time_per_call(f"fcache miss+insert {label}", our_miss_insert, number=number, repeat=5)
        rows.append((ours, base, 2.5))
        cache.close()
    return rows


def prefetch_rows(server: RedisServer) -> list[tuple[Timing, Timing, float]]:
    cache = cache_for(server.url, "bench-prefetch")
    backend = cache._backend()
    remote = backend.redis
    assert remote is not None
    keys = [EntryKey("bench.kernel", f"{i:064x}") for i in range(1000)]
    for k in keys:
        remote.insert(k, os.urandom(100))

    singles = time_per_call("1,000 single GETs", lambda: [remote.get(k) for k in keys], number=3)
    batch = time_per_call("prefetch of 1,000 keys", lambda: remote.get_many(keys), number=3)
    cache.close()
    # Reported the other way round: the target is a speed-up of at least 10x.
    print(f"\nprefetch speed-up: {singles.median_ns / batch.median_ns:.1f}x (target >= 10x)")
    return [(batch, singles, 0.1)]


def big_value_rows(server: RedisServer) -> list[tuple[Timing, Timing, float]]:
    raw = server.client()
    value = os.urandom(32 * 1024 * 1024)
    cache = cache_for(server.url, "bench-big")
    backend = cache._backend()
    remote, codec = backend.redis, backend.codec
    assert remote is not None
    counter = itertools.count()

    def raw_round_trip() -> None:
        k = f"rawbig:{next(counter)}"
        raw.set(k, value)
        raw.get(k)
        raw.delete(k)

    def our_round_trip() -> None:
        k = EntryKey("bench.big", f"{next(counter):064x}")
        remote.insert(k, codec.encode(k.key_id, value))
        blob = remote.get(k)
        assert blob is not None
        codec.decode(k.key_id, blob)
        raw.delete(remote.value_key(k))

    base = time_per_call("raw SET + GET 32MiB", raw_round_trip, number=3, repeat=5)
    ours = time_per_call("encode+SET NX+GET+decode 32MiB", our_round_trip, number=3, repeat=5)
    cache.close()
    return [(ours, base, 1.5)]


def main() -> None:
    with RedisServer(config=["maxmemory-policy noeviction"]) as server:
        results = {
            "remote_hit": report("remote hit (memo+disk cold) vs raw GET", remote_hit_rows(server)),
            "miss_insert": report("fcache miss+insert vs raw GET + SET NX", miss_insert_rows(server)),
            "prefetch": report("prefetch vs single GETs (ratio: lower is better)", prefetch_rows(server)),
            "big_value": report("32 MiB round trip vs raw SET + GET", big_value_rows(server)),
        }
    print(f"\nsaved {save('remote', results)}")


if __name__ == "__main__":
    main()
