"""Memory: bytes per memo entry, resident growth over repeated gets, page faults per hit.

    python -m bench.bench_memory [--quick] [--out bench/results]

7. Three figures, each against a baseline measured in the same run (no targets: issue 12
   asks for a bounded memo that keeps one copy of each value, and names no number):

   - Bytes per memo entry: ``tracemalloc`` bytes still allocated after 100,000 distinct
     ``fcache.record`` misses of a function returning a small ``bytes`` (10,000 with
     ``--quick``), per entry, against ``lru_cache(typed=True)`` filled with the same
     calls. The function returns a new object per call, which both keep. The disk layer
     is bounded to one byte (``REDIS_CACHE_DISK_MAX_BYTES=1``) so that no entry is
     written to disk: it has no bearing on the memo, and 100,000 files would dominate.
   - Resident growth over 8 gets of a 12 MB entry that only Redis holds (a fresh child
     process each time, RSS from ``/proc/self/statm`` before the first get and after the
     last, collected): ``fcache.get`` with the memo kept (one remote hit, then memo
     hits), and with the memo emptied before each get (then disk hits); against 8 raw
     ``GET`` of the value's bytes in a child that keeps the last result, as a caller
     would. Incompressible and JSON-like values.
   - Minor page faults per remote hit of 1 MiB and 4 MiB (``getrusage`` in a fresh child
     process per measurement, distinct keys, backfill on) against a raw ``GET`` of the
     same bytes whose results are kept in a list: the memo keeps each value, so fresh
     pages are inherent, and this baseline isolates extra copies. The faults of raw
     GETs whose results are dropped (the transfer alone) are noted beside it.
"""

from __future__ import annotations

import functools
import gc
import itertools
import shutil
import statistics
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from bench.bench_remote import Bench, bench_server, put_raw, put_remote
from bench.common import (
    KINDS,
    Options,
    Row,
    clean_env,
    command_line,
    compare_each,
    in_child,
    payload,
    report,
    row_from_pair,
    save,
)
from tests.support.servers import RedisServer

_ids = itertools.count()


def small(i: int) -> bytes:
    return b"result-%d" % i


small.__module__ = "bench_memory"


def _traced(fill: Any, n: int) -> float:
    """Bytes still allocated per entry after ``fill(range(n))``."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(range(n))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / n


def per_entry_rows(opts: Options) -> list[Row]:
    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    n = opts.n(100_000, 10_000)
    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    offset = itertools.count(step=n)
    holders: list[Any] = []
    try:

        def ours() -> float:
            cache = FastCache(Settings(dir=root, disk_max_bytes=1, stats_interval=0))
            recorded = cache.record()(small)
            recorded(-1)  # the runtime, the wrapper's index: built before counting
            base = next(offset)
            holders.append(cache)
            try:
                return _traced(lambda ids: [recorded(base + i) for i in ids], n)
            finally:
                cache.close()
                holders.clear()

        def lru() -> float:
            cached = functools.lru_cache(maxsize=None, typed=True)(small)
            cached(-1)
            base = next(offset)
            per = _traced(lambda ids: [cached(base + i) for i in ids], n)
            cached.cache_clear()
            return per

        pair = compare_each(
            (f"lru_cache(typed=True), {n:,} entries", lru),
            (f"fcache.record memo, {n:,} entries", ours),
            repeat=opts.n(3, 1),
            warmup=0,
            unit="B",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [
        row_from_pair(
            "memo bytes per entry",
            "small bytes result",
            pair,
            ratio_label="bytes ratio",
            note="tracemalloc; the same function and results on both sides",
        )
    ]


_RSS_OURS = """\
import gc, os
from pathlib import Path
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache
from bench.kernels import stored
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * page
cache = FastCache(Settings(dir=Path(__DIR__), url=__URL__, namespace=__NS__, stats_interval=0))
cache.get(stored, (("warm-up: connect",), {}))
before = rss()
for _ in range(__GETS__):
    if __FORGET__:
        cache._runtime().memo.clear()
    value = cache.get(stored, __PARAMS__).value
assert len(value) == __SIZE__
print(rss() - before)
"""

_RSS_RAW = """\
import gc, os
from pathlib import Path
import redis
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * page
client = redis.Redis.from_url(__URL__, protocol=2)
client.get("warm-up: connect")
before = rss()
for _ in range(__GETS__):
    value = client.get(__NAME__)
assert len(value) == __SIZE__
print(rss() - before)
"""


def rss_rows(bench: Bench, opts: Options) -> list[Row]:
    size, gets = 12_000_000, 8
    reader = bench.cache("rss")
    settings = reader._runtime().settings
    rows = []
    for kind in KINDS:
        value = payload(size, kind)
        params = ((f"rss-{kind}", next(_ids)), {})
        put_remote(reader, [params], value)
        name = f"raw:rss:{kind}"
        put_raw(bench.raw, [name], value)
        machines = itertools.count()

        def child(code: str, **names: Any) -> float:
            for placeholder, text in names.items():
                code = code.replace(f"__{placeholder}__", text)
            return in_child(code, env=clean_env()) / 1e6

        def ours(
            forget: bool, params: Any = params, kind: str = kind, machines: Any = machines
        ) -> float:
            directory = bench.root / f"rss-{kind}-{next(machines)}"  # an empty disk
            try:
                return child(
                    _RSS_OURS,
                    DIR=repr(str(directory)),
                    URL=repr(bench.server.url),
                    NS=repr(settings.namespace),
                    GETS=str(gets),
                    FORGET=str(forget),
                    PARAMS=repr(params),
                    SIZE=str(size),
                )
            finally:
                shutil.rmtree(directory, ignore_errors=True)

        def raw(name: str = name) -> float:
            return child(
                _RSS_RAW,
                URL=repr(bench.server.url),
                GETS=str(gets),
                NAME=repr(name),
                SIZE=str(size),
            )

        for label, forget in (("memo kept", False), ("memo emptied before each get", True)):
            pair = compare_each(
                (f"{gets} raw GET, last result kept", raw),
                (f"{gets} fcache.get, {label}", lambda f=forget, o=ours: o(f)),
                repeat=opts.n(5, 2),
                warmup=0,
                unit="MB",
            )
            rows.append(
                row_from_pair(
                    f"RSS growth, {gets} gets of a 12 MB entry",
                    f"{kind}, {label}",
                    pair,
                    ratio_label="RSS ratio",
                    note="a fresh child process per measurement",
                )
            )
    bench.raw.flushdb()
    return rows


_FAULTS_OURS = """\
import resource
from pathlib import Path
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache
from bench.kernels import stored
cache = FastCache(Settings(dir=Path(__DIR__), url=__URL__, namespace=__NS__, stats_interval=0))
cache.get(stored, (("warm-up: connect",), {}))
params = __PARAMS__
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for p in params:
    hit = cache.get(stored, p)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
assert cache.stats().remote_hits == len(params)
print(faults / len(params))
"""

_FAULTS_RAW = """\
import resource
import redis
client = redis.Redis.from_url(__URL__, protocol=2)
client.get("warm-up: connect")
names, kept = __NAMES__, []
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for name in names:
    value = client.get(name)
    if __KEEP__:
        kept.append(value)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
print(faults / len(names))
"""


def fault_rows(bench: Bench, opts: Options) -> list[Row]:
    reader = bench.cache("faults")
    settings = reader._runtime().settings
    env = clean_env()
    rows = []
    number = opts.n(16, 6)
    for label, size in (("1MiB", 1 << 20), ("4MiB", 4 << 20)):
        value = payload(size)

        def raw(keep: bool, value: bytes = value) -> float:
            names = [f"rawpf:{next(_ids)}" for _ in range(number)]
            put_raw(bench.raw, names, value)
            code = _FAULTS_RAW.replace("__URL__", repr(bench.server.url))
            code = code.replace("__NAMES__", repr(names)).replace("__KEEP__", str(keep))
            try:
                return in_child(code, env=env)
            finally:
                bench.raw.unlink(*names)

        def ours(value: bytes = value, label: str = label) -> float:
            params = [((f"faults-{label}", next(_ids)), {}) for _ in range(number)]
            put_remote(reader, params, value)
            directory = bench.root / f"faults-{next(_ids)}"  # an empty disk: remote hits
            code = _FAULTS_OURS.replace("__URL__", repr(bench.server.url))
            code = code.replace("__DIR__", repr(str(directory)))
            code = code.replace("__NS__", repr(settings.namespace))
            code = code.replace("__PARAMS__", repr(params))
            try:
                return in_child(code, env=env)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
                bench.raw.flushdb()

        repeat = opts.n(5, 2)
        dropped = [raw(False) for _ in range(repeat)]
        pair = compare_each(
            (f"raw GET, results kept {label}", lambda r=raw: r(True)),
            (f"fcache.get remote hit {label}", ours),
            repeat=repeat,
            warmup=0,
            unit="faults",
        )
        rows.append(
            row_from_pair(
                "minor page faults per remote hit",
                label,
                pair,
                ratio_label="faults ratio",
                note=f"a fresh child per measurement, {number} distinct keys, backfill "
                "thread included; raw GET with its results dropped (the transfer alone): "
                f"{statistics.median(dropped):g} faults per call",
            )
        )
    return rows


def run(opts: Options, server: RedisServer | None = None) -> dict[str, list[Row]]:
    rows = report("7. memo bytes per entry vs lru_cache", per_entry_rows(opts))
    with bench_server() if server is None else _given(server) as srv:
        bench = Bench(srv)
        try:
            rows += report(
                "7. RSS growth over repeated gets of a 12 MB entry", rss_rows(bench, opts)
            )
            rows += report("7. minor page faults per remote hit", fault_rows(bench, opts))
        finally:
            bench.close()
    save("memory", {"rows": [r.to_json() for r in rows]}, opts.out)
    return {"memory": rows}


class _given:
    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def __enter__(self) -> RedisServer:
        return self.server

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    command_line(run, __doc__)
