"""Soak: eight processes mixing fcache and dcache while the server restarts twice.

The server keeps an append-only file fsynced on every write (``appendfsync
always``), so every write it acknowledged survives both a graceful stop and a
SIGKILL. The workers run the operation table of ``tests.support.soak``; their
merged report must show that:

- fcache surfaced no exception and never returned a wrong value, and every
  fcache insert that Redis acknowledged is still there;
- dcache surfaced only ``redis_cache.SystemError`` subclasses (it fails closed
  while the server is away), every key got one value in every process, and that
  value is the one Redis holds; every dcache insert that returned True is there;
- every operation ran, there were writes of each kind to check, and fcache felt
  the outages.

Run length: ``SOAK_SECONDS`` (default 60). Figures are printed
and written to ``bench/results/soak.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from redis_cache.interfaces import DeterministicCache, FastCache
from tests.support.servers import RedisServer, require_binary
from tests.support.soak import Fleet, SoakReport, read_redis, soak_settings

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

WORKERS = 8
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
DOWNTIME = 1.0
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "soak.json"


def restart(server: RedisServer, how: str, at: float, started: float) -> dict[str, Any]:
    """Stop (``graceful``) or SIGKILL the server at ``started + at``; back after DOWNTIME."""
    time.sleep(max(0.0, started + at - time.monotonic()))
    down_at = time.monotonic()
    if how == "graceful":
        server.stop()
    else:
        server.kill()
    time.sleep(DOWNTIME)
    server.start()
    return {
        "kind": how,
        "at_seconds": round(down_at - started, 1),
        "downtime_seconds": round(time.monotonic() - down_at, 2),
    }


def test_soak_with_two_restarts(tmp_path: Path, namespace: str) -> None:
    require_binary("redis-server")
    with RedisServer(config=["appendonly yes", "appendfsync always"]) as server:
        fleet = Fleet.start(WORKERS, server.url, namespace, tmp_path, SOAK_SECONDS)
        started = time.monotonic()
        restarts = [
            restart(server, "graceful", SOAK_SECONDS / 3, started),
            restart(server, "sigkill", 2 * SOAK_SECONDS / 3, started),
        ]
        report = SoakReport.merge(fleet.collect())

        # Readers in this process, with the workers' settings, decode what Redis holds.
        root = tmp_path / "checker"
        caches = {
            "fcache": FastCache(soak_settings(root, server.url, namespace, False)),
            "dcache": DeterministicCache(soak_settings(root, server.url, namespace, True)),
        }
        try:
            verdicts = report.verdicts(read_redis(server.client(), caches, report.durable))
        finally:
            for cache in caches.values():
                cache.close()

    figures = {
        "seconds": SOAK_SECONDS,
        "workers": WORKERS,
        "restarts": restarts,
        "server": "redis-server, appendonly yes, appendfsync always",
        **verdicts.figures(),
    }
    print("\nsoak figures:\n" + json.dumps(figures, indent=2, sort_keys=True))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")

    failures = verdicts.failures()
    assert not failures, "\n".join(failures)
    felt = figures["counters"]["fcache"]
    assert felt["remote_errors"] + felt["remote_skipped"] > 0, "fcache never felt an outage"
