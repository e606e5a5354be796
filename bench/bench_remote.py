"""The Redis layer against raw redis-py on the same server, measured in one run.

    python -m bench.bench_remote [--quick] [--out bench/results]

Starts its own redis-server on a free port (tests/support/servers.py), never the one on 6379.
Both sides use the same redis-py (with hiredis when installed) over loopback TCP.

3. remote hit (memo and disk cold) vs a raw ``GET`` of the same bytes (target <= 1.4x).
   The reader's disk backfill is switched off so that every call really goes to Redis.
4. fcache miss+insert (``record`` of a new key: memo, disk and Redis miss, compute,
   encode, ``SET NX``, disk write) vs raw ``GET`` + ``SET NX`` (target <= 2.5x).
5. prefetch of 1,000 keys with ``RedisLayer.get_many`` vs 1,000 ``RedisLayer.get``
   (target >= 10x speed-up); raw ``MGET`` and a raw pipeline are shown for reference.
6. 32 MiB round trip: encode + ``SET NX`` + ``GET`` + decode vs raw ``SET`` + ``GET``
   of the same bytes (target <= 1.5x).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    PAYLOADS,
    Options,
    Row,
    command_line,
    compare,
    compare_each,
    record_index,
    report,
    row_from_pair,
    rows_json,
    save,
)
from redis_cache import context
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache
from redis_cache.layers import EntryKey
from tests.support.servers import RedisServer


def kernel(label: str, i: int) -> bytes:
    return b""  # never called: the benchmark inserts and reads values directly


class Caches:
    """FastCache instances on one server, each with its own disk dir; closed together."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._made: list[tuple[FastCache, Path]] = []

    def make(self, namespace: str, **kw: Any) -> FastCache:
        root = Path(tempfile.mkdtemp(prefix="bench-remote-"))
        cache = FastCache(Settings(dir=root, url=self.url, namespace=namespace, **kw))
        self._made.append((cache, root))
        return cache

    def cold_reader(self, namespace: str) -> FastCache:
        """A reader whose disk is never backfilled (the memo is cleared by the caller)."""
        reader = self.make(namespace)
        backend = reader._backend()
        backend.backfill_disk = lambda key, blob: None  # type: ignore[method-assign]
        return reader

    def close(self) -> None:
        for cache, root in self._made:
            cache.close()
            shutil.rmtree(root, ignore_errors=True)
        self._made.clear()


def _counts(size: int, opts: Options) -> tuple[int, int]:
    """(calls per repeat, repeats) for a payload size."""
    if size < 100_000:
        return opts.n(2000, 200), opts.n(15, 3)
    if size < 16_000_000:
        return opts.n(100, 10), opts.n(15, 3)
    return opts.n(4, 1), opts.n(9, 2)


def remote_hit_rows(server: RedisServer, opts: Options) -> list[Row]:
    rows = []
    raw = server.client()
    caches = Caches(server.url)
    try:
        for label, size in PAYLOADS.items():
            value = os.urandom(size)
            writer = caches.make("bench-hit")
            writer.insert(kernel, ((label, 0), {}), value)
            reader = caches.cold_reader("bench-hit")
            backend = reader._backend()
            key = reader._key(kernel, ((label, 0), {}), context.isolation_key(None), None)
            assert backend.redis is not None
            raw_key = f"raw:{label}"
            raw.set(raw_key, raw.get(backend.redis.value_key(key)))  # the same bytes
            entries = backend.memo._entries

            def hit(
                reader: FastCache = reader, label: str = label, entries: Any = entries
            ) -> object:
                entries.clear()
                return reader.get(kernel, ((label, 0), {}))

            assert hit().value == value  # type: ignore[union-attr]
            assert reader.stats().remote_hits == 1
            number, repeat = _counts(size, opts)
            pair = compare(
                (f"raw GET {label}", lambda k=raw_key: raw.get(k)),
                (f"fcache.get remote hit {label}", hit),
                number=number,
                repeat=repeat,
            )
            rows.append(row_from_pair("remote_hit", label, pair, target=1.4))
            assert reader.stats().disk_hits == 0
        raw.flushdb()
    finally:
        caches.close()
        raw.close()
    return rows


def _forget(cache: FastCache, recorded: Any) -> None:
    """Between repeats (not timed): finish queued disk backfills, so that background work
    of one side never runs during the other side's timing, then drop the memo and the
    record wrapper's index."""
    backend = cache._backend()
    backfill = getattr(backend, "_backfill", None)
    if backfill is not None:
        backfill.flush(60.0)
    backend.memo.clear()
    record_index(recorded).clear()


def miss_insert_rows(server: RedisServer, opts: Options) -> list[Row]:
    rows = []
    raw = server.client()
    caches = Caches(server.url)
    try:
        for label, size in PAYLOADS.items():
            value = os.urandom(size)
            cache = caches.make(f"bench-miss-{label}")
            disk_root = cache._backend().disk.root

            def produce(i: int, value: bytes = value) -> bytes:
                return value

            recorded = cache.record()(produce)
            counter = itertools.count()
            number, repeat = _counts(size, opts)

            def raw_block(
                value: bytes = value,
                number: int = number,
                label: str = label,
                counter: Any = counter,
            ) -> float:
                keys = [f"rawmiss:{label}:{next(counter)}" for _ in range(number)]
                start = time.perf_counter_ns()
                for k in keys:
                    raw.get(k)
                    raw.set(k, value, nx=True)
                elapsed = time.perf_counter_ns() - start
                raw.flushdb()
                return elapsed / number

            def our_block(
                recorded: Any = recorded,
                number: int = number,
                cache: Any = cache,
                disk_root: Path = disk_root,
                counter: Any = counter,
            ) -> float:
                ids = [next(counter) for _ in range(number)]
                start = time.perf_counter_ns()
                for i in ids:
                    recorded(i)
                elapsed = time.perf_counter_ns() - start
                _forget(cache, recorded)
                raw.flushdb()
                shutil.rmtree(disk_root, ignore_errors=True)
                return elapsed / number

            pair = compare_each(
                (f"raw GET + SET NX {label}", raw_block),
                (f"fcache miss+insert {label}", our_block),
                repeat=repeat,
            )
            stats = cache.stats()
            assert stats.computations > 0 and stats.inserts == stats.computations, stats
            rows.append(row_from_pair("miss_insert", label, pair, target=2.5))
    finally:
        caches.close()
        raw.close()
    return rows


def prefetch_rows(server: RedisServer, opts: Options) -> list[Row]:
    rows = []
    raw = server.client()
    caches = Caches(server.url)
    try:
        for label in ("100B", "10KiB"):
            cache = caches.make(f"bench-prefetch-{label}")
            remote = cache._backend().redis
            assert remote is not None
            keys = [EntryKey("bench.kernel", f"{i:064x}", "fcache") for i in range(1000)]
            pipe = raw.pipeline(transaction=False)
            for k in keys:
                pipe.set(remote.value_key(k), os.urandom(PAYLOADS[label]))
            pipe.execute()
            names = [remote.value_key(k) for k in keys]
            number, repeat = opts.n(5, 1), opts.n(15, 3)
            assert all(v is not None for v in remote.get_many(keys))
            pair = compare(
                (
                    f"1,000 x RedisLayer.get {label}",
                    lambda r=remote, ks=keys: [r.get(k) for k in ks],
                ),
                (f"RedisLayer.get_many(1,000) {label}", lambda r=remote, ks=keys: r.get_many(ks)),
                number=number,
                repeat=repeat,
            )
            rows.append(
                row_from_pair("prefetch", label, pair, target=10.0, goal="min", speedup=True)
            )

            def raw_pipeline(names: list[str] = names) -> object:
                p = raw.pipeline(transaction=False)
                for n in names:
                    p.get(n)
                return p.execute()

            ref = compare(
                (f"1,000 x raw GET {label}", lambda ns=names: [raw.get(n) for n in ns]),
                (f"raw pipeline of 1,000 GET {label}", raw_pipeline),
                number=number,
                repeat=repeat,
            )
            rows.append(
                row_from_pair(
                    "prefetch (reference)",
                    f"raw pipeline {label}",
                    ref,
                    speedup=True,
                    note="what redis-py's pipeline allows",
                )
            )
            ref = compare(
                (f"1,000 x raw GET {label}", lambda ns=names: [raw.get(n) for n in ns]),
                (f"raw MGET of 1,000 {label}", lambda ns=names: raw.mget(ns)),
                number=number,
                repeat=repeat,
            )
            rows.append(
                row_from_pair(
                    "prefetch (reference)",
                    f"raw MGET {label}",
                    ref,
                    speedup=True,
                    note="one command instead of 1,000",
                )
            )
        raw.flushdb()
    finally:
        caches.close()
        raw.close()
    return rows


def big_value_rows(server: RedisServer, opts: Options) -> list[Row]:
    raw = server.client()
    caches = Caches(server.url)
    try:
        value = os.urandom(PAYLOADS["32MiB"])
        cache = caches.make("bench-big")
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
            k = EntryKey("bench.big", f"{next(counter):064x}", "fcache")
            assert remote.insert(k, codec.encode(k.key_id, value))
            blob = remote.get(k)
            assert blob is not None
            codec.decode(k.key_id, blob)
            raw.delete(remote.value_key(k))

        pair = compare(
            ("raw SET + GET 32MiB", raw_round_trip),
            ("encode+SET NX+GET+decode 32MiB", our_round_trip),
            number=opts.n(3, 1),
            repeat=opts.n(11, 2),
        )
        raw.flushdb()
    finally:
        caches.close()
        raw.close()
    return [row_from_pair("big_value", "32MiB", pair, target=1.5)]


@contextlib.contextmanager
def bench_server() -> Iterator[RedisServer]:
    """A private redis-server: no persistence (servers.py default), never evicting."""
    with RedisServer(config=["maxmemory-policy noeviction"]) as server:
        yield server


SECTIONS: dict[str, tuple[str, Callable[[RedisServer, Options], list[Row]]]] = {
    "remote_hit": ("3. remote hit (memo+disk cold) vs raw GET", remote_hit_rows),
    "miss_insert": ("4. fcache miss+insert vs raw GET + SET NX", miss_insert_rows),
    "prefetch": ("5. prefetch of 1,000 keys vs 1,000 single gets (speed-up)", prefetch_rows),
    "big_value": ("6. 32 MiB round trip vs raw SET + GET", big_value_rows),
}


def run(opts: Options, server: RedisServer | None = None) -> dict[str, list[Row]]:
    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(bench_server())
        sections = {}
        for name, (title, fn) in SECTIONS.items():
            sections[name] = report(title, fn(server, opts))
            save(name, {"rows": rows_json(sections[name])}, opts.out)
    return sections


if __name__ == "__main__":
    command_line(run, __doc__)
