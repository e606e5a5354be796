"""Soak: eight processes mixing fcache and dcache while the server restarts twice.

The server keeps an append-only file fsynced on every write (``appendfsync
always``), so every write it acknowledged survives both a graceful stop and a
SIGKILL. Each worker (``tests.support.helpers.soak_worker``) records what it got back; afterwards:

- fcache surfaced no exception and never returned a wrong value, and every
  fcache insert that Redis acknowledged is still there;
- dcache surfaced only ``redis_cache.SystemError`` subclasses (it fails closed
  while the server is away), every key got one value in every process, and that
  value is the one Redis holds; every dcache insert that returned True is there.

Run length: ``SOAK_SECONDS`` (default 60). Figures are printed
and written to ``bench/results/soak.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import (
    soak_dinsert,
    soak_dkernel,
    soak_expected,
    soak_finsert,
    soak_settings,
    soak_worker,
)
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 8
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
DOWNTIME = 1.0
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "soak.json"


def entry_key(cache: CacheInterface, fn: Any, x: int) -> Any:
    return cache.entry_key(fn, ((x,), {}))


def read_back(server: RedisServer, cache: CacheInterface, fn: Any, xs: list[int]) -> dict[int, Any]:
    """What Redis holds for ``fn(x)`` for each x, decoded (``None`` if absent)."""
    backend = cache._runtime()
    assert backend.redis is not None
    keys = [entry_key(cache, fn, x) for x in xs]
    held: dict[int, Any] = {}
    client = server.client()
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.get(backend.redis.value_key(key))
        for x, key, blob in zip(xs[start : start + 1000], chunk, pipe.execute(), strict=True):
            held[x] = None if blob is None else backend.codec.decode(key.key_id, blob)
    return held


def test_soak_with_two_restarts(tmp_path: Path, namespace: str) -> None:
    with RedisServer(config=["appendonly yes", "appendfsync always"]) as server:
        barrier = SPAWN.Barrier(WORKERS + 1)
        outs = [tmp_path / f"report-{i}.json" for i in range(WORKERS)]
        procs = [
            SPAWN.Process(
                target=soak_worker,
                args=(
                    i,
                    server.url,
                    namespace,
                    str(tmp_path / "disks"),
                    SOAK_SECONDS,
                    barrier,
                    str(outs[i]),
                ),
            )
            for i in range(WORKERS)
        ]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)  # every worker imported and built its caches
        started = time.monotonic()
        restarts: list[dict[str, Any]] = []
        for when, how in ((SOAK_SECONDS / 3, "graceful"), (2 * SOAK_SECONDS / 3, "sigkill")):
            time.sleep(max(0.0, started + when - time.monotonic()))
            down_at = time.monotonic()
            if how == "graceful":
                server.stop()
            else:
                server.kill()
            time.sleep(DOWNTIME)
            server.start()
            restarts.append(
                {
                    "kind": how,
                    "at_seconds": round(down_at - started, 1),
                    "downtime_seconds": round(time.monotonic() - down_at, 2),
                }
            )
        for p in procs:
            p.join(SOAK_SECONDS + 120)
        hung = [p.pid for p in procs if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        assert not hung, f"workers {hung} did not finish within {SOAK_SECONDS + 120:g}s"
        assert [p.exitcode for p in procs] == [0] * WORKERS
        reports = [json.loads(path.read_text()) for path in outs]

        # Readers in this process, with the workers' settings.
        fc = FastCache(soak_settings(tmp_path / "checker", server.url, namespace, False))
        dc = DeterministicCache(soak_settings(tmp_path / "checker", server.url, namespace, True))

        ops: dict[str, int] = {}
        errors: dict[str, dict[str, int]] = {"fcache": {}, "dcache": {}}
        for r in reports:
            for name, n in r["ops"].items():
                ops[name] = ops.get(name, 0) + n
            for interface, counts in r["errors"].items():
                for name, n in counts.items():
                    errors[interface][name] = errors[interface].get(name, 0) + n
        stats = {
            interface: {
                name: round(sum(r["stats"][interface][name] for r in reports), 3)
                for name in reports[0]["stats"][interface]
            }
            for interface in ("fcache", "dcache")
        }

        # dcache: one value per key across every process, and it is the one Redis holds.
        seen: dict[int, set[str]] = {}
        for r in reports:
            for x, values in r["dcache_values"].items():
                seen.setdefault(int(x), set()).update(values)
        diverged = {x: sorted(v) for x, v in seen.items() if len(v) > 1}
        held = read_back(server, dc, soak_dkernel, sorted(seen))
        dcache_lost = {x: sorted(v) for x, v in seen.items() if held[x] is None}
        dcache_mismatch = {
            x: (sorted(v), held[x])
            for x, v in seen.items()
            if held[x] is not None and held[x] not in v
        }
        inserts = [(y, value) for r in reports for y, value in r["dcache_inserts"]]
        held_inserts = read_back(server, dc, soak_dinsert, [y for y, _ in inserts])
        dinsert_lost = [(y, v) for y, v in inserts if held_inserts[y] != v]

        # fcache: every insert Redis acknowledged is still there, with the right value.
        acked = [y for r in reports for y in r["fcache_acked"]]
        held_acked = read_back(server, fc, soak_finsert, acked)
        finsert_lost = [y for y in acked if held_acked[y] != soak_expected(y)]

        figures = {
            "seconds": SOAK_SECONDS,
            "workers": WORKERS,
            "key_space": 300,
            "restarts": restarts,
            "server": "redis-server, appendonly yes, appendfsync always",
            "operations": sum(v for k, v in ops.items() if k != "machine_resets"),
            "operations_by_kind": ops,
            "errors_surfaced": {
                interface: sum(counts.values()) for interface, counts in errors.items()
            },
            "errors_by_type": errors,
            "fcache_wrong_values": sum(r["wrong_fcache_count"] for r in reports),
            "dcache_keys": len(seen),
            "dcache_keys_with_diverging_values": len(diverged),
            "entries_lost": {
                "dcache_results": len(dcache_lost) + len(dcache_mismatch),
                "dcache_inserts_acknowledged": len(dinsert_lost),
                "fcache_inserts_acknowledged_by_redis": len(finsert_lost),
            },
            "acknowledged_writes_checked": {
                "dcache_results": len(seen),
                "dcache_inserts": len(inserts),
                "fcache_inserts": len(acked),
            },
            "fcache_inserts_kept_local_while_redis_was_away": sum(
                r["fcache_local_only"] for r in reports
            ),
            "counters": stats,
        }
        print("\nsoak figures:\n" + json.dumps(figures, indent=2, sort_keys=True))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        fc.close()
        dc.close()

        samples = [s for r in reports for s in r["error_samples"]][:10]
        assert errors["fcache"] == {}, f"fcache surfaced exceptions: {samples}"
        not_system = [s for r in reports for s in r["not_system_errors"]]
        assert not not_system, f"dcache surfaced non-SystemError exceptions: {not_system[:10]}"
        assert figures["fcache_wrong_values"] == 0, [w for r in reports for w in r["wrong_fcache"]]
        assert not diverged, f"dcache keys with more than one value: {diverged}"
        assert not dcache_lost, f"dcache results no longer in redis: {dcache_lost}"
        assert not dcache_mismatch, f"dcache results differing from redis: {dcache_mismatch}"
        assert not dinsert_lost, f"acknowledged dcache inserts lost: {dinsert_lost[:10]}"
        assert not finsert_lost, f"acknowledged fcache inserts lost: {finsert_lost[:10]}"
        assert ops.get("dcache.record", 0) > 0 and ops.get("fcache.record", 0) > 0
        assert inserts and acked, "no acknowledged inserts to check"
