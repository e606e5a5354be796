"""Helpers shared by tests: settings factories and worker functions for real processes.

Worker functions live at module level so spawned processes can import them. Each
computation appends a line to ``$REDIS_CACHE_TEST_LEDGER`` (O_APPEND writes are
atomic for short lines), so tests count computations across processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import pickle
import struct
import time
from pathlib import Path
from typing import Any

from redis_cache.codec import unsigned_tag
from redis_cache.config import Settings

LEDGER_ENV = "REDIS_CACHE_TEST_LEDGER"
DELAY_ENV = "REDIS_CACHE_TEST_DELAY"


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    return dataclasses.replace(Settings(dir=Path(tmp)), **overrides)


def checkout(pool: Any) -> Any:
    """A connection from a redis-py pool; before redis-py 5.3 the command name was required."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("PING")


def note_computation(label: str) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if ledger:
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {label}\n".encode())
        finally:
            os.close(fd)


def computations(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines() if ledger.exists() else []


def rich_value(x: int) -> dict[str, Any]:
    """A result using every type the codec must keep exact."""
    return {
        "tuple": (x, "a", (1.5, None)),
        "list": [x, [True, False]],
        "set": {x, x + 1},
        "frozenset": frozenset({"k", x}),
        "bytes": bytes([x % 256]) * 3,
        "big": 2**200 + x,
        "neg_big": -(2**90) - x,
        (x, "tuple-key"): -0.0,
    }


def compile_rich(x: int) -> dict[str, Any]:
    note_computation(f"compile_rich {x}")
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    return rich_value(x)


def compile_tagged(x: int) -> str:
    """Returns a per-process value: determinism shows as every caller seeing one pid."""
    note_computation(f"compile_tagged {x}")
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    return f"{x}@{os.getpid()}@{time.time_ns()}"


def describe(value: Any) -> Any:
    """A JSON-able, type-revealing description of a value (for comparing across processes)."""
    if isinstance(value, dict):
        return ["dict", sorted((json.dumps(describe(k)), describe(v)) for k, v in value.items())]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [describe(v) for v in value]]
    if isinstance(value, (set, frozenset)):
        return [type(value).__name__, sorted(json.dumps(describe(v)) for v in value)]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, float):
        return ["float", value.hex()]
    return [type(value).__name__, repr(value)]


def record_and_describe(kind: str, fn_name: str, arg: Any) -> tuple[Any, dict[str, float]]:
    """Run in a fresh process: call ``support.<fn_name>(arg)`` through ``redis_cache.<kind>``."""
    import redis_cache  # noqa: PLC0415 - imported in the child with its own environment
    from tests.support import helpers as support  # noqa: PLC0415

    cache = getattr(redis_cache, kind)
    wrapped = cache.record()(getattr(support, fn_name))
    value = wrapped(arg)
    stats = cache.stats().as_dict()
    cache.close()
    return describe(value), stats


def call_many(kind: str, fn_name: str, args: list[Any]) -> list[Any]:
    """Run in a fresh process: call the recorded function on each argument, return the values."""
    import redis_cache  # noqa: PLC0415
    from tests.support import helpers as support  # noqa: PLC0415

    cache = getattr(redis_cache, kind)
    wrapped = cache.record()(getattr(support, fn_name))
    values = [wrapped(a) for a in args]
    cache.close()
    return values


def compile_slow_first(x: int) -> str:
    """Sleeps ``$REDIS_CACHE_TEST_DELAY`` only for the fleet's first attempt (per ledger)."""
    ledger = os.environ.get(LEDGER_ENV)
    first = not (ledger and Path(ledger).exists() and Path(ledger).read_text().strip())
    note_computation(f"compile_slow_first {x}")
    if first:
        time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    return f"{x}@{os.getpid()}"


def compile_failing_first(x: int) -> str:
    """The fleet's first attempt raises (a crashing compiler); later ones succeed."""
    ledger = os.environ.get(LEDGER_ENV)
    first = not (ledger and Path(ledger).exists() and Path(ledger).read_text().strip())
    note_computation(f"compile_failing_first {x}")
    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    if first:
        raise RuntimeError("compiler crashed")
    return f"{x}@{os.getpid()}"


def dcache_worker(fn_name: str, arg: Any, barrier: Any, out: Any, role: str = "") -> None:
    """Process body: wait at ``barrier`` (if any), call through dcache, report to ``out``."""
    import redis_cache  # noqa: PLC0415
    from tests.support import helpers as support  # noqa: PLC0415

    wrapped = redis_cache.dcache.record()(getattr(support, fn_name))
    if barrier is not None:
        barrier.wait()
    try:
        value: Any = wrapped(arg)
        error = None
    except Exception as exc:  # reported to the test, which decides
        value, error = None, f"{type(exc).__name__}: {exc}"
    returned_at = time.time()
    out.put(
        {
            "role": role,
            "pid": os.getpid(),
            "value": value,
            "error": error,
            "returned_at": returned_at,
            "stats": redis_cache.dcache.stats().as_dict(),
        }
    )
    redis_cache.dcache.close()


def dcache_many_worker(fn_name: str, args: list[Any], out: Any) -> None:
    """Process body: record every argument in the given order, report the values."""
    import redis_cache  # noqa: PLC0415
    from tests.support import helpers as support  # noqa: PLC0415

    wrapped = redis_cache.dcache.record()(getattr(support, fn_name))
    out.put({arg: wrapped(arg) for arg in args})
    redis_cache.dcache.close()


def dcache_each_worker(fn_name: str, args: list[Any], barrier: Any, out: Any) -> None:
    """Process body: record every argument in order; report each value or error by key."""
    import redis_cache  # noqa: PLC0415
    from tests.support import helpers as support  # noqa: PLC0415

    wrapped = redis_cache.dcache.record()(getattr(support, fn_name))
    barrier.wait(timeout=120)
    report: dict[Any, tuple[str, Any]] = {}
    for arg in args:
        try:
            report[arg] = ("value", wrapped(arg))
        except Exception as exc:  # reported to the test, which decides
            report[arg] = ("error", f"{type(exc).__name__}: {exc}")
    out.put({"pid": os.getpid(), "report": report, "stats": redis_cache.dcache.stats().as_dict()})
    redis_cache.dcache.close()


def compile_quick(x: int) -> str:
    note_computation(f"compile_quick {x}")
    return f"{x}@{os.getpid()}"


def fcache_worker(fn_name: str, arg: Any, barrier: Any, out: Any) -> None:
    """Process body: wait at ``barrier``, call through fcache, report value and stats."""
    import redis_cache  # noqa: PLC0415
    from tests.support import helpers as support  # noqa: PLC0415

    wrapped = redis_cache.fcache.record()(getattr(support, fn_name))
    barrier.wait()
    value = wrapped(arg)
    out.put({"value": value, "stats": redis_cache.fcache.stats().as_dict()})
    redis_cache.fcache.close()


def exploit_envelope(
    key_id: bytes, marker: Path, *, signed_with: bytes | None = None
) -> bytes:
    """A well-formed pickle envelope whose loading would create ``marker``."""

    class Exploit:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Exploit())
    flags = 0x04 if signed_with else 0
    header = struct.pack(">2sBBBQ", b"RC", 1, 2, flags, len(payload))
    if signed_with:
        tag = hmac.new(signed_with, key_id + header + payload, hashlib.sha256).digest()
    else:
        tag = unsigned_tag(key_id, header, payload)
    return header + tag + payload


# --------------------------------------------------------------------------- entries on disk


def entry_relpath(scratch: Path, cache_factory: Any, fn: Any, params: Any) -> Path:
    """Where ``fn(*params)``'s disk entry lives, relative to ``REDIS_CACHE_DIR``.

    Found through the public API only: a cache built by ``cache_factory(scratch)``
    inserts a probe value and the one entry file it creates is located.
    """
    cache = cache_factory(scratch)
    try:
        if not cache.insert(fn, params, "probe"):
            raise RuntimeError(f"{scratch} already holds an entry for {params}")
    finally:
        cache.close()
    files = [
        p for p in scratch.rglob("*")
        if p.is_file() and "entries" in p.parts and not p.name.startswith(".")
    ]  # fmt: skip
    if len(files) != 1:
        raise RuntimeError(f"expected one entry file under {scratch}, found {files}")
    return files[0].relative_to(scratch)
