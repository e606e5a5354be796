"""What a user and an operator can see: per-callee counters, hooks, Prometheus metrics.

The fleet view (``redis-cache stats``, ``--prometheus``, ``--zero``) runs the real
command against counters real workers published to a real server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

import redis_cache
from redis_cache import hooks, metrics
from redis_cache.interfaces import FastCache
from tests.support.helpers import make_settings
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]


def kernel(x: int) -> int:
    time.sleep(0.01)
    return x * 2


def other(x: int) -> int:
    return x + 1


def test_counters_per_callee_hit_ratio_and_time_saved(tmp_path: Path) -> None:
    cache = FastCache(make_settings(tmp_path))
    k, o = cache.record()(kernel), cache.record()(other)
    for x in (1, 1, 1, 2):
        k(x)
    o(5)
    assert cache.get(other, ((5,), {})) is not None  # a get counts too
    assert cache.get(other, ((6,), {})) is None
    stats = cache.stats()
    mine = stats.callees[f"{__name__}.kernel"]
    theirs = stats.callees[f"{__name__}.other"]
    assert (mine.computations, mine.memo_hits, mine.misses) == (2, 2, 2)
    assert (theirs.computations, theirs.memo_hits, theirs.misses) == (1, 1, 2)
    assert mine.hit_ratio == 0.5
    assert mine.compute_seconds >= 0.02  # two calls that each slept 10 ms
    assert mine.seconds_saved == pytest.approx(2 * mine.compute_seconds / 2)
    assert stats.memo_hits == 3 and stats.misses == 4 and stats.computations == 3
    assert stats.hit_ratio == pytest.approx(3 / 7)
    cache.close()


def test_hooks_see_hits_misses_computations_and_errors(tmp_path: Path) -> None:
    events: list[hooks.Event] = []
    remove = hooks.add(events.append)
    broken_calls: list[int] = []

    def broken(event: hooks.Event) -> None:
        broken_calls.append(1)
        raise RuntimeError("a user's hook that fails")

    remove_broken = hooks.add(broken)
    try:
        cache = FastCache(make_settings(tmp_path))
        k = cache.record()(kernel)
        k(3)
        k(3)
        cache.close()
        again = FastCache(make_settings(tmp_path))  # same disk: a disk hit
        again.record()(kernel)(3)
        again.close()
    finally:
        remove()
        remove_broken()
    kinds = [(e.kind, e.layer) for e in events if e.callee == f"{__name__}.kernel"]
    assert kinds == [("miss", None), ("compute", None), ("hit", "memo"), ("hit", "disk")]
    compute = next(e for e in events if e.kind == "compute")
    assert compute.seconds is not None and compute.seconds >= 0.01
    assert broken_calls, "a failing hook is still called, and never breaks the call"
    assert hooks.active == []


def test_hooks_hear_about_a_sick_remote(tmp_path: Path) -> None:
    events: list[hooks.Event] = []
    remove = hooks.add(events.append)
    try:
        cache = FastCache(make_settings(tmp_path, url="redis://127.0.0.1:9/0",
                                        connect_timeout=0.2))  # fmt: skip
        assert cache.record()(kernel)(4) == 8  # served locally
        cache.close()
    finally:
        remove()
    errors = [e for e in events if e.kind == "error"]
    assert errors and all(isinstance(e.error, redis_cache.RemoteUnavailableError) for e in errors)
    assert errors[0].layer == "redis"


@pytest.fixture
def isolated_singletons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The package's singletons on an empty disk directory, with no remote layer."""
    for name in list(os.environ):
        if name.startswith("REDIS_CACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_CACHE_DIR", str(tmp_path / "singletons"))
    redis_cache.fcache.close()
    redis_cache.config.reset()
    yield
    redis_cache.fcache.close()
    redis_cache.config.reset()


@pytest.mark.usefixtures("isolated_singletons")
def test_a_worker_registers_its_counters_with_prometheus() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics.register(registry)
    name = f"{__name__}.other"
    before = registry.get_sample_value(
        "redis_cache_hits_total", {"interface": "fcache", "callee": name, "layer": "memo"}
    )
    recorded = redis_cache.fcache.record()(other)
    recorded(100)
    recorded(100)
    after = registry.get_sample_value(
        "redis_cache_hits_total", {"interface": "fcache", "callee": name, "layer": "memo"}
    )
    assert (after or 0) - (before or 0) == 1
    computed = registry.get_sample_value(
        "redis_cache_computations_total", {"interface": "fcache", "callee": name}
    )
    assert computed is not None and computed >= 1
    text = prometheus_client.generate_latest(registry).decode()
    assert "redis_cache_inserts_total" in text


def test_exposition_escapes_label_values() -> None:
    text = metrics.exposition(metrics.samples("fcache", {"inserts": 2},
                                              {'odd "name"\\x': {"misses": 1}}))  # fmt: skip
    assert 'callee="odd \\"name\\"\\\\x"' in text
    assert "# TYPE redis_cache_inserts_total counter" in text
    assert 'redis_cache_inserts_total{interface="fcache"} 2' in text


WORKER = """
import sys
from tests.support.helpers import compile_rich
import redis_cache
f = redis_cache.fcache.record()(compile_rich)
for x in (1, 1, 2, 2, 3):
    f(x)
redis_cache.fcache.close()
"""


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_cache", *args], capture_output=True, text=True,
        env=env, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


def test_fleet_counters_per_callee_prometheus_and_zero(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    env.update(REDIS_CACHE_URL=redis_server.url, REDIS_CACHE_NAMESPACE=namespace,
               REDIS_CACHE_STATS_INTERVAL="60")  # fmt: skip
    for machine in ("a", "b"):  # two workers on two "machines" publish at close
        done = subprocess.run(
            [sys.executable, "-c", WORKER], env={**env, "REDIS_CACHE_DIR": str(tmp_path / machine)},
            capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    shown = run_cli("stats", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    report: dict[str, Any] = json.loads(shown.stdout)
    per_callee = report["callee_counters"]["fcache"]["tests.support.helpers.compile_rich"]
    # a: 3 computed, 2 memo hits; b: 3 remote hits then 2 memo hits
    assert per_callee["computations"] == 3
    assert per_callee["remote_hits"] == 3 and per_callee["memo_hits"] == 4
    assert per_callee["hit_ratio"] == pytest.approx(7 / 10)
    assert per_callee["seconds_saved"] is not None
    text = run_cli("stats", env=env)
    assert "tests.support.helpers.compile_rich" in text.stdout and "70.0" in text.stdout
    prom = run_cli("stats", "--prometheus", env=env)
    assert prom.returncode == 0, prom.stderr
    assert ('redis_cache_hits_total{interface="fcache",'
            'callee="tests.support.helpers.compile_rich",layer="redis"} 3') in prom.stdout
    zeroed = run_cli("stats", "--zero", env=env)
    assert zeroed.returncode == 0 and "zeroed" in zeroed.stdout
    after = json.loads(run_cli("stats", "--json", env=env).stdout)
    assert after["counters"] == {} and after["callee_counters"] == {}
