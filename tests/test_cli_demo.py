"""``redis-cache demo`` and the command line's shape, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


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
