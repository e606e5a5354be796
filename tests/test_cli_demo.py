"""``redis-cache demo`` and the command line's shape, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import RedisServer


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redis_cache", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    done = run_cli(
        "demo",
        "--workers",
        "3",
        "--kernels",
        "3",
        "--seconds",
        "0.2",
        env=clean_env(REDIS_CACHE_DIR=str(tmp_path)),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "remote layer: none" in out
    assert "compilations: " in out
    calls = [line for line in out.splitlines() if line.strip().startswith("worker ")]
    assert len(calls) == 3 * 3 * 2
    compiled = sum("compiled" in line for line in calls)
    assert 3 <= compiled < len(calls)  # each kernel at least once, far from every call
    assert any(" memo " in line for line in calls)
    assert any(" disk " in line for line in calls)


def test_help_for_every_subcommand() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("demo",):
        assert command in top.stdout
        sub = run_cli(command, "--help")
        assert sub.returncode == 0, sub.stderr


def test_configuration_errors_exit_2_without_traceback() -> None:
    done = run_cli("demo", env=clean_env(REDIS_CACHE_LOCK_TIMEOUT="later"))
    assert done.returncode == 2
    assert "REDIS_CACHE_LOCK_TIMEOUT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.real_redis
def test_demo_shows_the_redis_layer_and_single_flight(tmp_path: Path, redis_server: Any) -> None:
    env = clean_env(
        REDIS_CACHE_DIR=str(tmp_path), REDIS_CACHE_URL=redis_server.url,
        REDIS_CACHE_NAMESPACE=f"demo-{tmp_path.name}"[:60], REDIS_CACHE_DETERMINISTIC="1",
    )
    done = run_cli("demo", "--workers", "4", "--kernels", "3", "--seconds", "0.5", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "dcache (deterministic)" in out and "own disk, shared redis" in out
    calls = [line for line in out.splitlines() if line.strip().startswith("worker ")]
    assert len(calls) == 4 * 3 * 2
    # Single flight: each kernel compiled once in the whole farm, the rest waited or hit.
    assert sum(" compiled " in line for line in calls) == 3
    assert any(" redis " in line or " waited " in line for line in calls)
    assert "compilations: 3 " in out
    assert "remote errors: 0; calls that skipped the remote layer: 0" in out


def test_demo_validates_its_arguments() -> None:
    for args in (("--seconds", "-1"), ("--seconds", "nan"), ("--workers", "0"),
                 ("--kernels", "0"), ("--workers", "1000")):  # fmt: skip
        done = run_cli("demo", *args, env=clean_env())
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert args[0] in done.stderr and "Traceback" not in done.stderr


@pytest.mark.real_redis
def test_a_failing_worker_stops_the_demo_at_once_with_one_line(tmp_path: Path) -> None:
    with RedisServer(config=["maxmemory-policy allkeys-lru"]) as server:
        env = clean_env(REDIS_CACHE_DIR=str(tmp_path), REDIS_CACHE_URL=server.url,
                        REDIS_CACHE_DETERMINISTIC="1")  # fmt: skip
        done = run_cli("demo", "--workers", "2", "--kernels", "2", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "a worker failed: DeterministicCachingRequiresStrongConsistencyError" in done.stdout
    assert "allkeys-lru" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.real_redis
def test_remote_failures_are_reported_and_fail_the_demo(tmp_path: Path) -> None:
    acl = ["user nobody-here on >no-rights-pw-1 ~elsewhere:* +@all"]
    with RedisServer(acl=acl) as server:
        url = f"redis://nobody-here:no-rights-pw-1@127.0.0.1:{server.port}/0"
        env = clean_env(REDIS_CACHE_DIR=str(tmp_path), REDIS_CACHE_URL=url)
        done = run_cli("demo", "--workers", "2", "--kernels", "2", "--seconds", "0",
                       env=env)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    summary = done.stdout.split("summary:")[1]
    errors = int(summary.split("remote errors: ")[1].split(";")[0])
    skipped = int(summary.split("skipped the remote layer: ")[1].split()[0])
    assert errors + skipped > 0 and errors > 0, summary
    assert "the remote layer failed" in done.stdout
    assert "no-rights-pw-1" not in done.stdout + done.stderr
