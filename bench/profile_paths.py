"""Where the time of each benchmarked path goes: component timings and cProfile tables.

    python -m bench.profile_paths [remote_hit|miss_insert|prefetch|big_value|dcache|disk_hit]...
    /tmp/venv-torch/bin/python -m bench.profile_paths torch

Not part of ``run_all.py``: a tool for explaining a missed target. Each section times
the path's components in isolation (median of 7 runs, microseconds per call) next to
the whole path, then prints the top of a cProfile run of the whole path (cProfile
inflates Python-heavy parts; use the component timings for proportions).
"""

from __future__ import annotations

import cProfile
import io
import itertools
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import record_index


def us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    timer = timeit.Timer(fn)
    timer.timeit(max(1, number // 10))
    return statistics.median(timer.timeit(number) / number * 1e6 for _ in range(repeat))


def table(title: str, parts: dict[str, tuple[Callable[[], object], int]]) -> None:
    print(f"\n### {title}: microseconds per call (median of 7)")
    for name, (fn, number) in parts.items():
        print(f"  {us(fn, number):10.1f}  {name}")


def profile(title: str, fn: Callable[[], object], number: int, top: int = 18) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(number):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    start = text.find("   ncalls")
    print(f"\n### cProfile of {title} ({number} calls), by own time")
    print(text[start:].rstrip().replace(str(Path.home()), "~"))


def kernel(label: str, i: int) -> bytes:
    return b""


def breakdown(
    title: str, fn: Callable[[], object], number: int, parts: list[tuple[str, Any, str]]
) -> None:
    """Inclusive time of each ``(label, object, method name)`` per call of ``fn``.

    Each method is wrapped (on the instance) for the run, counting calls made by this
    thread only: about 0.1 us of wrapper cost each, so the whole path is timed both with
    and without the wrappers.
    """
    plain = us(fn, number)
    spent = dict.fromkeys((label for label, _, _ in parts), 0)
    originals = []
    caller = threading.get_ident()
    for label, obj, name in parts:
        original = getattr(obj, name)

        def timed(*args: Any, _original: Any = original, _label: str = label, **kw: Any) -> Any:
            if threading.get_ident() != caller:  # e.g. the disk backfill thread
                return _original(*args, **kw)
            start = time.perf_counter_ns()
            try:
                return _original(*args, **kw)
            finally:
                spent[_label] += time.perf_counter_ns() - start

        setattr(obj, name, timed)
        originals.append((obj, name))
    try:
        fn()
        for label in spent:
            spent[label] = 0
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        total = (time.perf_counter_ns() - start) / number / 1e3
    finally:
        for obj, name in reversed(originals):
            delattr(obj, name)  # the instance attribute we set: the class method shows again
    print(f"\n### {title}: inclusive microseconds per call (one instrumented run)")
    print(f"  {plain:10.1f}  whole path, not instrumented (median of 7)")
    print(f"  {total:10.1f}  whole path, instrumented")
    for label, _, _ in parts:
        print(f"  {spent[label] / number / 1e3:10.1f}  {label}")


def remote_hit(server: Any) -> None:

    raw = server.client()
    for size in (100, 10 * 1024, 1024 * 1024):
        _remote_hit_size(server, raw, size)
    raw.close()


def _remote_hit_size(server: Any, raw: Any, size: int) -> None:
    from redis_cache import context  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    value = os.urandom(size)
    root = Path(tempfile.mkdtemp())
    writer = FastCache(Settings(dir=root, url=server.url, namespace="prof"))
    writer.insert(kernel, (("x", size), {}), value)
    reader = FastCache(Settings(dir=Path(tempfile.mkdtemp()), url=server.url, namespace="prof"))
    backend = reader._backend()
    backend.backfill_disk = lambda key, blob: None  # type: ignore[method-assign]
    key = reader._key(kernel, (("x", size), {}), context.isolation_key(None), None)
    assert backend.redis is not None and backend.fail_open_remote is not None
    vkey = backend.redis.value_key(key)
    blob = raw.get(vkey)
    client = backend.redis.client()
    entries = backend.memo._entries

    def hit(reader: Any = reader, size: int = size, entries: Any = entries) -> object:
        entries.clear()
        return reader.get(kernel, (("x", size), {}))

    n = 2000 if size < 100_000 else 200
    pause = 20e-6

    def spin() -> None:
        end = time.perf_counter() + pause
        while time.perf_counter() < end:
            pass

    def raw_then_spin(vkey: str = vkey) -> None:
        raw.get(vkey)
        spin()

    table(
        f"remote hit {size} B",
        {
            "raw GET (tight loop: the baseline)": (lambda vkey=vkey: raw.get(vkey), n),
            "raw GET + 20 us of client CPU between requests": (raw_then_spin, n),
            "busy 20 us alone": (spin, n),
            "GET on the library's own client": (lambda vkey=vkey: client.get(vkey), n),
            "RedisLayer.get": (lambda key=key: backend.redis.get(key), n),  # type: ignore[union-attr]
            "FailOpenRemote.get": (lambda key=key: backend.fail_open_remote.get(key), n),  # type: ignore[union-attr]
            "key: fcache._key(...)": (
                lambda size=size: reader._key(
                    kernel, (("x", size), {}), context.isolation_key(None), None
                ),
                n,
            ),
            "disk miss: DiskLayer.get": (lambda key=key: backend.disk.get(key), n),
            "Codec.decode": (
                lambda key=key, blob=blob: backend.codec.decode(key.key_id, blob),
                n,
            ),
            "whole path: fcache.get remote hit": (hit, n),
        },
    )
    breakdown(
        f"remote hit {size} B",
        hit,
        n,
        [
            ("CacheInterface._key (key digest)", reader, "_key"),
            ("DiskLayer.get (miss)", backend.disk, "get"),
            ("FailOpenRemote.get (breaker + layer)", backend.fail_open_remote, "get"),
            ("  RedisLayer.get (client, value_key, bytes)", backend.redis, "get"),
            ("    redis-py Redis.get (the round trip)", client, "get"),
            ("FastCache._decode (Codec.decode)", reader, "_decode"),
            ("Backend.remember (memo insert)", backend, "remember"),
        ],
    )
    if size == 100:
        profile("fcache.get remote hit 100 B", hit, 3000)
    writer.close()
    reader.close()
    shutil.rmtree(root, ignore_errors=True)


def miss_insert(server: Any) -> None:

    raw = server.client()
    for size in (100, 10 * 1024, 1024 * 1024):
        _miss_insert_size(server, raw, size)
    raw.close()


def _miss_insert_size(server: Any, raw: Any, size: int) -> None:
    from redis_cache.codec import Codec  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415
    from redis_cache.layers import DiskLayer, EntryKey  # noqa: PLC0415

    counter = itertools.count()
    value = os.urandom(size)
    root = Path(tempfile.mkdtemp())
    cache = FastCache(Settings(dir=root, url=server.url, namespace=f"prof-miss-{size}"))

    def produce(i: int, value: bytes = value) -> bytes:
        return value

    recorded = cache.record()(produce)
    backend = cache._backend()
    disk = DiskLayer(Path(tempfile.mkdtemp()), "prof")
    auto, off = Codec(None, "auto"), Codec(None, "off")
    key_id = b"0" * 64
    n = 300 if size < 100_000 else 30

    def raw_pair(value: bytes = value) -> None:
        k = f"rawp:{next(counter)}"
        raw.get(k)
        raw.set(k, value, nx=True)

    def ours(recorded: Any = recorded) -> None:
        recorded(next(counter))

    table(
        f"miss+insert {size} B",
        {
            "raw GET + SET NX (the baseline)": (raw_pair, n),
            "Codec('auto').encode (compression sampling)": (
                lambda value=value: auto.encode(key_id, value),
                n,
            ),
            "Codec('off').encode": (lambda value=value: off.encode(key_id, value), n),
            "DiskLayer.insert (new file)": (
                lambda value=value: disk.insert(
                    EntryKey("p", f"{next(counter):064x}", "fcache"), value
                ),
                n,
            ),
            "whole path: fcache.record miss+insert": (ours, n),
        },
    )
    client = backend.redis.client()  # type: ignore[union-attr]
    breakdown(
        f"miss+insert {size} B",
        ours,
        n,
        [
            ("CacheInterface._key (key digest)", cache, "_key"),
            ("DiskLayer.get (miss)", backend.disk, "get"),
            ("FailOpenRemote.get (miss)", backend.fail_open_remote, "get"),
            ("    redis-py Redis.get", client, "get"),
            ("CacheInterface._encode (Codec.encode)", cache, "_encode"),
            ("FastCache._store", cache, "_store"),
            ("  FailOpenRemote.insert (SET NX)", backend.fail_open_remote, "insert"),
            ("    redis-py Redis.set", client, "set"),
            ("  Backend.backfill_disk (enqueue)", backend, "backfill_disk"),
            ("  DiskLayer.insert (on the caller's thread)", backend.disk, "insert"),
        ],
    )
    if size == 10 * 1024:
        profile("fcache.record miss+insert 10 KiB", ours, 500)
    backfill = getattr(backend, "_backfill", None)
    if backfill is not None:
        backfill.flush(30)
    cache.close()
    record_index(recorded).clear()
    raw.flushdb()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(disk.root.parent.parent, ignore_errors=True)


def prefetch(server: Any) -> None:
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415
    from redis_cache.layers import EntryKey  # noqa: PLC0415

    raw = server.client()
    cache = FastCache(Settings(dir=Path(tempfile.mkdtemp()), url=server.url, namespace="pf"))
    remote = cache._backend().redis
    assert remote is not None
    keys = [EntryKey("bench.kernel", f"{i:064x}", "fcache") for i in range(1000)]
    names = [remote.value_key(k) for k in keys]
    for name in names:
        raw.set(name, os.urandom(100))

    def pipeline() -> object:
        p = raw.pipeline(transaction=False)
        for name in names:
            p.get(name)
        return p.execute()

    table(
        "prefetch of 1,000 keys x 100 B (per 1,000)",
        {
            "1,000 x RedisLayer.get (the baseline)": (lambda: [remote.get(k) for k in keys], 5),
            "1,000 x raw GET": (lambda: [raw.get(n) for n in names], 5),
            "RedisLayer.get_many": (lambda: remote.get_many(keys), 20),
            "raw pipeline of 1,000 GET": (pipeline, 20),
            "raw MGET of 1,000 keys": (lambda: raw.mget(names), 20),
            "value_key() x 1,000": (lambda: [remote.value_key(k) for k in keys], 50),
        },
    )
    profile("RedisLayer.get_many(1,000 keys)", lambda: remote.get_many(keys), 30)
    raw.flushdb()
    cache.close()
    raw.close()


def big_value(server: Any) -> None:
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415
    from redis_cache.layers import EntryKey  # noqa: PLC0415

    raw = server.client()
    value = os.urandom(32 * 1024 * 1024)
    cache = FastCache(Settings(dir=Path(tempfile.mkdtemp()), url=server.url, namespace="big"))
    backend = cache._backend()
    remote, codec = backend.redis, backend.codec
    assert remote is not None
    key = EntryKey("bench.big", "0" * 64, "fcache")
    blob = codec.encode(key.key_id, value)
    raw.set("rawbig", value)
    counter = itertools.count()

    def ours() -> None:
        k = EntryKey("bench.big", f"{next(counter):064x}", "fcache")
        assert remote.insert(k, codec.encode(k.key_id, value))
        got = remote.get(k)
        assert got is not None
        codec.decode(k.key_id, got)
        raw.delete(remote.value_key(k))

    def raw_trip() -> None:
        k = f"rawbig:{next(counter)}"
        raw.set(k, value)
        raw.get(k)
        raw.delete(k)

    table(
        "32 MiB round trip",
        {
            "raw SET + GET + DEL (the baseline)": (raw_trip, 5),
            "raw GET alone": (lambda: raw.get("rawbig"), 5),
            "raw SET alone": (lambda: raw.set("rawbig", value), 5),
            "Codec.encode (auto: sample, CRC-32 on 2 threads, join copy)": (
                lambda: codec.encode(key.key_id, value),
                5,
            ),
            "Codec.decode (CRC-32 while copying the payload)": (
                lambda: codec.decode(key.key_id, blob),
                5,
            ),
            "bytes(value) copy": (lambda: bytes(bytearray(value)), 5),
            "whole path: encode + SET NX + GET + decode + DEL": (ours, 5),
        },
    )
    profile("32 MiB round trip", ours, 5)
    raw.flushdb()
    cache.close()
    raw.close()


def dcache(server: Any) -> None:
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import DeterministicCache  # noqa: PLC0415
    from redis_cache.layers import EntryKey  # noqa: PLC0415
    from redis_cache.lease import LeaseLock, LeaseStats  # noqa: PLC0415

    settings = Settings(
        dir=Path(tempfile.mkdtemp()),
        url=server.url,
        namespace="prof-d",
        stats_interval=0,
        deterministic=True,
        determinism="global",
    )
    cache = DeterministicCache(settings)

    def produce(tag: str, i: int) -> bytes:
        return b"v" * 100

    recorded = cache.record()(produce)
    recorded("warm", 0)
    backend = cache._backend()
    sync, layer = backend.sync_remote, backend.redis
    assert sync is not None and layer is not None
    client = layer.client()
    raw = server.client()
    counter = itertools.count()

    def fresh() -> Any:
        return EntryKey("p", f"{next(counter):064x}", "fcache")

    def lease(renew: bool) -> Callable[[], None]:
        def run() -> None:
            key = fresh()
            lock = LeaseLock(
                client, layer.entry_keys(key), lease=30, stats=LeaseStats(), renew=renew
            )
            assert lock.acquire(60)
            lock.commit(b"v" * 100)

        return run

    def thread_cycle() -> None:
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, args=(10,))
        t.start()
        stop.set()
        t.join()

    def raw_pair() -> None:
        k = f"rawd:{next(counter)}"
        raw.get(k)
        raw.set(k, b"v" * 100, nx=True)

    table(
        "dcache uncontended miss+record (100 B)",
        {
            "raw GET + SET NX (the baseline)": (raw_pair, 300),
            "raw GET (one round trip)": (lambda: raw.get("nokey"), 1000),
            "SyncRemote.retrying(no-op): tenacity per operation": (
                lambda: sync.retrying(lambda: None, "x"),
                2000,
            ),
            "SyncRemote.get (miss)": (lambda: sync.get(fresh()), 1000),
            "RedisLayer.get (miss)": (lambda: layer.get(fresh()), 1000),
            "renewal thread: start + stop + join": (thread_cycle, 1000),
            "LeaseLock acquire + commit, renew=True": (lease(True), 300),
            "LeaseLock acquire + commit, renew=False": (lease(False), 300),
            "whole path: dcache.record miss (5 round trips)": (
                lambda: recorded(f"m{next(counter)}", 1),
                300,
            ),
        },
    )
    profile("dcache.record uncontended miss", lambda: recorded(f"p{next(counter)}", 1), 300)
    raw.flushdb()
    cache.close()
    raw.close()


def disk_hit(server: Any) -> None:
    from redis_cache import context  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp())
    value = os.urandom(100)
    writer = FastCache(Settings(dir=root, stats_interval=0))
    writer.insert(kernel, (("x", 1), {}), value)
    reader = FastCache(Settings(dir=root, stats_interval=0))
    backend = reader._backend()
    key = reader._key(kernel, (("x", 1), {}), context.isolation_key(None), None)
    path, codec = backend.disk.path(key), backend.codec
    entries = backend.memo._entries

    def plain() -> object:
        with open(path, "rb") as f:
            return codec.decode(key.key_id, f.read())

    def hit() -> object:
        entries.clear()
        return reader.get(kernel, (("x", 1), {}))

    table(
        "disk hit 100 B",
        {
            "open().read() + decode (the baseline)": (plain, 5000),
            "key: fcache._key(...)": (
                lambda: reader._key(kernel, (("x", 1), {}), context.isolation_key(None), None),
                5000,
            ),
            "DiskLayer.get": (lambda: backend.disk.get(key), 5000),
            "Codec.decode": (lambda: codec.decode(key.key_id, value), 5000),
            "whole path: fcache.get disk hit": (hit, 5000),
        },
    )
    profile("fcache.get disk hit 100 B", hit, 5000)
    shutil.rmtree(root, ignore_errors=True)


def torch_context(server: Any) -> None:
    from redis_cache import context  # noqa: PLC0415
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    try:
        import torch  # noqa: PLC0415
        from torch._inductor import config as inductor_config  # noqa: PLC0415
    except ImportError as exc:
        print(f"skipped: torch is not importable ({exc})")
        return
    cache = FastCache(Settings(dir=Path(tempfile.mkdtemp()), stats_interval=0))

    def k(op: str, m: int) -> bytes:
        return op.encode() * m

    default = cache.record()(k)
    static = cache.record(ischema={"runtime_context": False, "compile_context": True})(k)
    default("matmul", 4)
    static("matmul", 4)
    ctx = context.isolation_context(None)
    table(
        f"isolation key with torch {torch.__version__} importable",
        {
            "record memo hit, default schema": (lambda: default("matmul", 4), 100),
            "record memo hit, runtime_context=False": (lambda: static("matmul", 4), 100_000),
            "context.isolation_key(None)": (lambda: context.isolation_key(None), 100),
            "  inductor config.save_config_portable()": (context._inductor_configs, 100),
            "  _digest: json.dumps + sha256 of the context": (lambda: context._digest(ctx), 300),
            "  torch determinism configs": (context._torch_determinism_configs, 10_000),
            "  cuda matmul precision configs": (context._cuda_matmul_precision_configs, 10_000),
            "inductor config.get_hash() (cached until a config changes)": (
                inductor_config.get_hash,
                100_000,
            ),
        },
    )
    profile("record memo hit with torch importable", lambda: default("matmul", 4), 100)


SECTIONS: dict[str, Callable[[Any], None]] = {
    "remote_hit": remote_hit,
    "miss_insert": miss_insert,
    "prefetch": prefetch,
    "big_value": big_value,
    "dcache": dcache,
    "disk_hit": disk_hit,
    "torch": torch_context,
}


def main() -> None:
    chosen = sys.argv[1:] or [name for name in SECTIONS if name != "torch"]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    print(f"load average {os.getloadavg()}")
    if chosen == ["torch"]:
        torch_context(None)
        return
    from tests.support.servers import RedisServer  # noqa: PLC0415

    with RedisServer(config=["maxmemory-policy noeviction"]) as server:
        for name in chosen:
            SECTIONS[name](server)
    print(f"\nload average {os.getloadavg()}")


if __name__ == "__main__":
    main()
