"""Memo and disk hits against their baselines, measured in one run.

    python bench/bench_local.py

Targets (issue: core library): a memo hit through ``record`` within 3x of a
``functools.lru_cache(typed=True)`` hit on the same function and arguments; a
disk hit within 2x of ``open().read()`` of the same bytes plus decoding.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import report, save, time_per_call

from redis_cache import context
from redis_cache.config import Settings
from redis_cache.interfaces import FastCache

PAYLOADS = {"100B": 100, "10KiB": 10 * 1024, "1MiB": 1024 * 1024}


def kernel(op: str, m: int) -> bytes:
    return op.encode() * m


def memo_hit_rows() -> list:
    cache = FastCache(Settings(dir=Path(tempfile.mkdtemp())))
    recorded = cache.record()(kernel)
    cached = functools.lru_cache(maxsize=None, typed=True)(kernel)
    recorded("matmul", 4)
    cached("matmul", 4)
    number = 200_000
    lru = time_per_call("lru_cache(typed=True) hit", lambda: cached("matmul", 4), number=number)
    memo = time_per_call("fcache.record memo hit", lambda: recorded("matmul", 4), number=number)
    return [(memo, lru, 3.0)]


def disk_hit_rows() -> list:
    rows = []
    root = Path(tempfile.mkdtemp())
    for label, size in PAYLOADS.items():
        value = os.urandom(size)
        writer = FastCache(Settings(dir=root))

        def produce(label: str, value: bytes = value) -> bytes:
            return value

        writer.insert(produce, ((label,), {}), value)
        backend = writer._backend()
        key = writer._key(produce, ((label,), {}), context.isolation_key(None), None)
        path = backend.disk.path(key)
        codec = backend.codec
        reader = FastCache(Settings(dir=root))
        reader._backend()

        def plain_read(path: str = path, codec: Any = codec, key: Any = key) -> object:
            with open(path, "rb") as f:
                return codec.decode(key.key_id, f.read())

        def disk_hit(
            reader: FastCache = reader, produce: Any = produce, label: str = label
        ) -> object:
            reader._backend().memo.clear()  # keep the memo cold: every call reads disk
            return reader.get(produce, ((label,), {}))

        number = 2000 if size < 1_000_000 else 200
        base = time_per_call(f"open().read()+decode {label}", plain_read, number=number)
        hit = time_per_call(f"fcache.get disk hit {label}", disk_hit, number=number)
        rows.append((hit, base, 2.0))
    return rows


def main() -> None:
    results = {
        "memo": report("memo hit vs functools.lru_cache(typed=True)", memo_hit_rows()),
        "disk": report("disk hit vs open().read() + decode", disk_hit_rows()),
    }
    print(f"\nsaved {save('local', results)}")


if __name__ == "__main__":
    main()
