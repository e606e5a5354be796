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


# --------------------------------------------------------------------------- soak (test_soak)

SOAK_KEYS = 300
SOAK_RESET_SECONDS = 1.0  # a worker becomes a "fresh machine" (empty memo and disk) this often


def soak_expected(x: int) -> tuple[int, str, str]:
    """What fcache's pure soak function returns: every process must get exactly this."""
    import hashlib  # noqa: PLC0415

    return (x, "soak", hashlib.sha256(str(x).encode()).hexdigest()[:16])


def soak_fkernel(x: int) -> tuple[int, str, str]:
    return soak_expected(x)


def soak_finsert(x: int) -> tuple[int, str, str]:  # only a name for fcache.insert keys
    return soak_expected(x)


def soak_dkernel(x: int) -> str:
    """Different in every process and call: a divergence between callers would show."""
    return f"{x}@{os.getpid()}@{time.time_ns()}"


def soak_dinsert(x: int) -> str:  # only a name for dcache.insert keys
    return soak_dkernel(x)


def soak_settings(root: Path, url: str, namespace: str, deterministic: bool) -> Settings:
    common: dict[str, Any] = {
        "url": url,
        "namespace": namespace,
        "connect_timeout": 0.5,
        "socket_timeout": 1.0,
        "stats_interval": 0,
    }
    if deterministic:
        return make_settings(
            root,
            deterministic=True,
            determinism="global",
            retry_deadline=15.0,
            lock_lease=2.0,
            lock_timeout=30.0,
            **common,
        )
    return make_settings(root, breaker_cooldown=0.1, breaker_max_cooldown=1.0, **common)


def soak_worker(
    index: int, url: str, namespace: str, root: str, seconds: float, barrier: Any, out_path: str
) -> None:
    """Process body of the soak: random fcache/dcache calls until ``seconds`` have passed.

    Writes a JSON report to ``out_path``: operation counts, exceptions per interface,
    fcache values that were wrong, every value dcache returned per key, every dcache
    insert that returned True, and every fcache insert Redis acknowledged.
    """
    import random  # noqa: PLC0415
    from collections import Counter  # noqa: PLC0415

    from redis_cache import exceptions  # noqa: PLC0415
    from redis_cache.interfaces import DeterministicCache, FastCache  # noqa: PLC0415

    rng = random.Random(index)
    base = Path(root) / f"worker-{index}"
    rounds = 0

    def fresh() -> tuple[FastCache, DeterministicCache]:
        disk = base / f"round-{rounds}"
        return (
            FastCache(soak_settings(disk, url, namespace, deterministic=False)),
            DeterministicCache(soak_settings(disk, url, namespace, deterministic=True)),
        )

    totals: dict[str, Counter[str]] = {"fcache": Counter(), "dcache": Counter()}

    def add_stats(*caches: FastCache | DeterministicCache) -> None:
        for cache in caches:
            totals[cache.name].update(cache.stats().as_dict())

    fc, dc = fresh()
    ops: Counter[str] = Counter()
    errors: dict[str, Counter[str]] = {"fcache": Counter(), "dcache": Counter()}
    not_system_errors: list[str] = []
    samples: list[str] = []
    wrong_fcache: list[str] = []
    dcache_values: dict[int, list[str]] = {}
    dcache_inserts: list[tuple[int, str]] = []
    fcache_acked: list[int] = []
    fcache_local_only = 0
    barrier.wait(timeout=120)
    started = time.monotonic()
    deadline = started + seconds
    next_reset = started + SOAK_RESET_SECONDS
    frecord = fc.record()(soak_fkernel)
    drecord = dc.record()(soak_dkernel)
    for _ in range(50_000_000):
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_reset:
            add_stats(fc, dc)
            fc.close()
            dc.close()
            rounds += 1
            fc, dc = fresh()
            frecord = fc.record()(soak_fkernel)
            drecord = dc.record()(soak_dkernel)
            next_reset = now + SOAK_RESET_SECONDS
            ops["machine_resets"] += 1
        x = rng.randrange(SOAK_KEYS)
        roll = rng.random()
        interface = "fcache" if roll < 0.55 else "dcache"
        try:
            if roll < 0.35:
                ops["fcache.record"] += 1
                value: Any = frecord(x)
                if value != soak_expected(x):
                    wrong_fcache.append(f"record {x}: {value!r}")
            elif roll < 0.45:
                ops["fcache.insert"] += 1
                y = rng.randrange(10**9)  # nearly always a new key: a real write
                before = fc.stats()
                inserted = fc.insert(soak_finsert, ((y,), {}), soak_expected(y))
                after = fc.stats()
                remote_failed = (after.remote_errors, after.remote_skipped) != (
                    before.remote_errors,
                    before.remote_skipped,
                )
                if inserted and not remote_failed:
                    fcache_acked.append(y)  # SET NX returned True: Redis has it
                elif inserted:
                    fcache_local_only += 1
            elif roll < 0.55:
                ops["fcache.get"] += 1
                hit = fc.get(soak_fkernel, ((x,), {}))
                if hit is not None and hit.value != soak_expected(x):
                    wrong_fcache.append(f"get {x}: {hit.value!r}")
            elif roll < 0.85:
                ops["dcache.record"] += 1
                dcache_values.setdefault(x, []).append(drecord(x))
            elif roll < 0.92:
                ops["dcache.insert"] += 1
                y = rng.randrange(10**9)
                value = soak_dkernel(y)
                if dc.insert(soak_dinsert, ((y,), {}), value):
                    dcache_inserts.append((y, value))
            else:
                ops["dcache.get"] += 1
                hit = dc.get(soak_dkernel, ((x,), {}))
                if hit is not None:
                    dcache_values.setdefault(x, []).append(hit.value)
        except Exception as exc:
            errors[interface][type(exc).__name__] += 1
            if not isinstance(exc, exceptions.SystemError):
                not_system_errors.append(f"{interface}: {type(exc).__name__}: {exc}")
            if len(samples) < 20:
                samples.append(f"{interface}: {type(exc).__name__}: {exc}")
    ran_for = time.monotonic() - started
    add_stats(fc, dc)
    stats = {name: dict(counter) for name, counter in totals.items()}
    fc.close()
    dc.close()
    report = {
        "index": index,
        "seconds": ran_for,
        "ops": dict(ops),
        "errors": {name: dict(counter) for name, counter in errors.items()},
        "not_system_errors": not_system_errors[:50],
        "error_samples": samples,
        "wrong_fcache": wrong_fcache[:50],
        "wrong_fcache_count": len(wrong_fcache),
        "dcache_values": {str(k): sorted(set(v)) for k, v in dcache_values.items()},
        "dcache_inserts": dcache_inserts,
        "fcache_acked": fcache_acked,
        "fcache_local_only": fcache_local_only,
        "stats": stats,
    }
    Path(out_path).write_text(json.dumps(report))


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
