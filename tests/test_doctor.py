"""``redis-cache doctor`` on what a deployment gets wrong: run as a real CLI against real servers.

Persistence under global determinism (issue 9, item 26), a missing or placeholder
secret or password (item 17, issue 13), an ACL that refuses ``CLIENT SETNAME``
(issue 13); and the server report both ``doctor`` and ``dcache`` read
(:mod:`redis_cache.fitness`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from redis_cache import fitness
from redis_cache.layers.redis import RedisLayer
from tests.support.helpers import make_settings
from tests.support.servers import RedisClusterHandle, RedisServer

pytestmark = pytest.mark.real_redis

STATUSES = ("ok", "FAIL", "warn", "skip")
SECRET = "a-real-fleet-secret-8d1f0c"


def run_doctor(env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """Exit code, ``{check: status}`` and the whole output of ``python -m redis_cache doctor``."""
    done = subprocess.run(
        [sys.executable, "-m", "redis_cache", "doctor"], capture_output=True, text=True,
        env=env, timeout=120, check=False,
    )  # fmt: skip
    statuses = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in STATUSES:
            statuses[parts[1]] = parts[0]
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    return done.returncode, statuses, output


def line_of(output: str, check: str) -> str:
    return next(line for line in output.splitlines() if line.split()[1:2] == [check])


@pytest.fixture
def env(tmp_cache_dir: Path, namespace: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_CACHE_")}
    return {**clean, "REDIS_CACHE_DIR": str(tmp_cache_dir), "REDIS_CACHE_NAMESPACE": namespace}


# --------------------------------------------------------------------------- persistence


def test_a_server_persisting_nothing_fails_global_determinism(
    env: dict[str, str], redis_server: RedisServer
) -> None:
    # The test servers run with save "" and appendonly no.
    fleet = {**env, "REDIS_CACHE_URL": redis_server.url, "REDIS_CACHE_SECRET": SECRET}
    code, statuses, output = run_doctor({**fleet, "REDIS_CACHE_DETERMINISTIC": "1"})
    assert code == 1, output
    assert statuses["persistence"] == "FAIL"
    assert "global determinism" in line_of(output, "persistence")
    # fcache, or dcache under local determinism, only loses speed on a restart.
    code, statuses, output = run_doctor(fleet)
    assert (code, statuses["persistence"]) == (0, "warn"), output
    local = {**fleet, "REDIS_CACHE_DETERMINISTIC": "1", "REDIS_CACHE_DETERMINISM": "local"}
    assert run_doctor(local)[1]["persistence"] == "warn"


def test_a_persisting_server_passes(env: dict[str, str]) -> None:
    with RedisServer(config=["appendonly yes"]) as server:
        deterministic = {
            **env,
            "REDIS_CACHE_URL": server.url,
            "REDIS_CACHE_DETERMINISTIC": "1",
            "REDIS_CACHE_SECRET": SECRET,
        }
        code, statuses, output = run_doctor(deterministic)
    assert code == 0, output
    assert statuses["persistence"] == "ok" and "AOF on" in line_of(output, "persistence")


# --------------------------------------------------------------------------- secrets


def test_no_secret_is_a_warning(env: dict[str, str], redis_server: RedisServer) -> None:
    code, statuses, output = run_doctor({**env, "REDIS_CACHE_URL": redis_server.url})
    assert code == 0 and statuses["secret"] == "warn", output
    assert "trusts" in line_of(output, "secret")
    signed = {**env, "REDIS_CACHE_URL": redis_server.url, "REDIS_CACHE_SECRET": SECRET}
    assert run_doctor(signed)[1]["secret"] == "ok"
    assert run_doctor(env)[1]["secret"] == "skip"  # no remote layer: nothing shared


@pytest.mark.parametrize(
    ("password", "secret"),
    [
        ("CHANGE-ME-worker", SECRET),
        ("pw-7c2e91-ok", "CHANGE_ME_to_a_long_random_secret"),
        ("my-password-1", SECRET),
        ("pw-7c2e91-ok", "example-secret-for-the-docs"),
    ],
)
def test_placeholder_passwords_and_secrets_fail(
    env: dict[str, str], password: str, secret: str
) -> None:
    with RedisServer(password=password) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        code, statuses, output = run_doctor(
            {**env, "REDIS_CACHE_URL": url, "REDIS_CACHE_SECRET": secret}
        )
    assert code == 1, output
    assert statuses["credentials"] == "FAIL"
    assert statuses["reachable"] == "ok"  # the placeholder works: that is the danger
    assert password not in output and secret not in output


def test_real_credentials_pass(env: dict[str, str]) -> None:
    with RedisServer(password="k3Jq-91xv-Lm2p") as server:
        url = f"redis://:k3Jq-91xv-Lm2p@127.0.0.1:{server.port}/0"
        code, statuses, output = run_doctor(
            {**env, "REDIS_CACHE_URL": url, "REDIS_CACHE_SECRET": SECRET}
        )
    assert code == 0, output
    assert statuses["credentials"] == "ok"


# --------------------------------------------------------------------------- ACL


def test_an_acl_refusing_client_setname_is_named(env: dict[str, str]) -> None:
    acl = ["user worker on >worker-pw-3 ~redis_cache:* +@all -client|setname"]
    with RedisServer(acl=acl) as server:
        url = f"redis://worker:worker-pw-3@127.0.0.1:{server.port}/0"
        code, statuses, output = run_doctor({**env, "REDIS_CACHE_URL": url})
    assert code == 1, output
    assert statuses["reachable"] == "FAIL"
    reachable = line_of(output, "reachable")
    assert "CLIENT SETNAME" in reachable and "+client|setname" in reachable
    assert "worker-pw-3" not in output


# --------------------------------------------------------------------------- the report


def report_of(tmp_path: Path, read_config: bool = True, **settings: object) -> fitness.ServerReport:
    layer = RedisLayer(make_settings(tmp_path, **settings))
    try:
        return fitness.inspect(layer, read_config=read_config)
    finally:
        layer.close()


def test_report_of_a_standalone_server(tmp_path: Path, redis_server: RedisServer) -> None:
    report = report_of(tmp_path, url=redis_server.url)
    assert len(report.nodes) == 1 and report.primary and report.eviction_safe
    assert report.persistent is False and report.proto_max_bulk_len == 512 * 1024 * 1024
    settings = make_settings(tmp_path, url=redis_server.url, deterministic=True)
    assert report.blocking_problems(settings) == []
    assert any("persists nothing" in w for w in report.warnings(settings))
    more = make_settings(tmp_path, url=redis_server.url, min_replicas=1)
    assert report.blocking_problems(more) == ["0 replicas connected, REDIS_CACHE_MIN_REPLICAS=1"]
    # INFO only (what workers may run): without AOF, persistence is unknown.
    info_only = report_of(tmp_path, read_config=False, url=redis_server.url)
    assert info_only.persistent is None and info_only.proto_max_bulk_len is None
    assert info_only.blocking_problems(settings) == []


def test_report_of_a_cluster_covers_every_primary(
    tmp_path: Path, redis_cluster: RedisClusterHandle
) -> None:
    report = report_of(tmp_path, url=redis_cluster.url, cluster=True)
    assert len(report.nodes) == 3 and report.primary


def test_report_names_replicas_and_evicting_policies(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with RedisServer(config=[f"replicaof 127.0.0.1 {redis_server.port}"]) as replica:
        report = report_of(tmp_path, url=replica.url)
    assert not report.primary and report.roles == "slave"
    problems = report.blocking_problems(make_settings(tmp_path))
    assert problems and "replica" in problems[0]
    with RedisServer(config=["maxmemory-policy allkeys-lru", "appendonly yes"]) as server:
        report = report_of(tmp_path, url=server.url)
    assert report.persistent is True and not report.eviction_safe
    assert "allkeys-lru" in report.blocking_problems(make_settings(tmp_path))[0]


def test_report_without_config_rights_leaves_what_config_says_unknown(tmp_path: Path) -> None:
    acl = ["user worker on >worker-pw-4 ~* +@all -config"]
    with RedisServer(acl=acl) as server:
        url = f"redis://worker:worker-pw-4@127.0.0.1:{server.port}/0"
        report = report_of(tmp_path, url=url)
    assert report.primary and report.persistent is None and report.proto_max_bulk_len is None
    assert any("unknown" in w for w in report.warnings(make_settings(tmp_path)))
