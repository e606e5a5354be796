"""Memo and disk hits against their baselines, measured in one run.

    python -m bench.bench_local [--quick] [--out bench/results]

1. memo hit through ``fcache.record`` vs a ``functools.lru_cache(typed=True)`` hit on
   the same function and arguments (target <= 3x). Both are timed as bare statements
   (``f("matmul", 4)``) so no benchmark wrapper dilutes the ratio.
2. disk hit (``fcache.get`` with the memo cold) vs ``open().read()`` of the same file
   plus ``Codec.decode`` (target <= 2x), for 100 B, 10 KiB, 1 MiB and 32 MiB.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    PAYLOADS,
    Options,
    Row,
    command_line,
    compare,
    report,
    row_from_pair,
    rows_json,
    save,
)
from redis_cache import context
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache


def kernel(op: str, m: int) -> bytes:
    return op.encode() * m


def memo_hit_rows(opts: Options) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="bench-memo-"))
    try:
        cache = FastCache(Settings(dir=root, stats_interval=0))
        recorded = cache.record()(kernel)
        cached = functools.lru_cache(maxsize=None, typed=True)(kernel)
        recorded("matmul", 4)
        cached("matmul", 4)
        pair = compare(
            ("lru_cache(typed=True) hit", ("f('matmul', 4)", {"f": cached})),
            ("fcache.record memo hit", ("f('matmul', 4)", {"f": recorded})),
            number=opts.n(200_000, 20_000),
            repeat=opts.n(15, 3),
        )
        cache.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [row_from_pair("memo_hit", "2 args", pair, target=3.0)]


def disk_hit_rows(opts: Options) -> list[Row]:
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    try:
        for label, size in PAYLOADS.items():
            value = os.urandom(size)
            writer = FastCache(Settings(dir=root, stats_interval=0))

            def produce(label: str, value: bytes = value) -> bytes:
                return value

            writer.insert(produce, ((label,), {}), value)
            backend = writer._backend()
            key = writer._key(produce, ((label,), {}), context.isolation_key(None), None)
            path = backend.disk.path(key)
            codec = backend.codec
            reader = FastCache(Settings(dir=root, stats_interval=0))
            memo_entries = reader._backend().memo._entries

            def plain_read(path: str = path, codec: Any = codec, key: Any = key) -> object:
                with open(path, "rb") as f:
                    return codec.decode(key.key_id, f.read())

            def disk_hit(
                reader: FastCache = reader,
                produce: Any = produce,
                label: str = label,
                entries: dict[str, Any] = memo_entries,
            ) -> object:
                entries.clear()  # keep the memo cold: every call reads the disk
                return reader.get(produce, ((label,), {}))

            assert disk_hit().value == value  # type: ignore[union-attr]
            if size < 1_000_000:
                number, repeat = opts.n(3000, 300), opts.n(15, 3)
            elif size < 16_000_000:
                number, repeat = opts.n(200, 10), opts.n(15, 3)
            else:
                number, repeat = opts.n(8, 1), opts.n(11, 3)
            pair = compare(
                (f"open().read()+decode {label}", plain_read),
                (f"fcache.get disk hit {label}", disk_hit),
                number=number,
                repeat=repeat,
            )
            rows.append(row_from_pair("disk_hit", label, pair, target=2.0))
            writer.close()
            reader.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def run(opts: Options) -> dict[str, list[Row]]:
    sections = {
        "memo_hit": report("1. memo hit vs functools.lru_cache(typed=True)", memo_hit_rows(opts)),
        "disk_hit": report(
            "2. disk hit (memo cold) vs open().read() + decode", disk_hit_rows(opts)
        ),
    }
    for name, rows in sections.items():
        save(name, {"rows": rows_json(rows)}, opts.out)
    return sections


if __name__ == "__main__":
    command_line(run, __doc__)
