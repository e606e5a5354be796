"""Smoke tests of the test infrastructure itself (``servers.py`` and the fixtures)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.support.servers import (
    CLUSTER_SLOTS,
    RedisClusterHandle,
    RedisServer,
    RedisServerError,
    SentinelHandle,
    TLSMaterial,
    free_port,
    require_binary,
)

pytestmark = pytest.mark.real_redis


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is gone for our purposes once reaped by Popen.wait().
    return True


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    bus = free_port(cluster_bus=True)
    assert bus + 10000 <= 65535 and bus not in ports


@pytest.mark.parametrize("ci", ["true", ""])
def test_require_binary_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="no-such-binary-xyz"):
        require_binary("no-such-binary-xyz")
    assert require_binary("sh").endswith("sh")


def test_standalone_answers_kill_restart(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with server.client() as client:
        assert client.ping()
        client.set("k", "v")
    pid = server.pid
    assert pid is not None
    server.kill()
    assert not server.is_running and not _alive(pid)
    with server.client() as client, pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert server.is_running and server.pid != pid
    with server.client() as client:
        assert client.get("k") is None  # no persistence by default
    server.stop()
    assert not server.is_running


def test_persistence_survives_kill_and_restart() -> None:
    require_binary("redis-server")
    with RedisServer(config=["appendonly yes", "appendfsync always"]) as server:
        port = server.port
        with server.client() as client:
            client.set("k", "kept")
        server.kill()
        server.restart()
        assert server.port == port
        with server.client() as client:
            assert client.get("k") == b"kept"


def test_pause_and_resume(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    server.pause()
    with server.client(socket_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 2
    server.resume()
    with server.client() as client:
        assert client.ping()


def test_close_removes_process_and_dir() -> None:
    require_binary("redis-server")
    server = RedisServer(unix_socket=True)
    assert server.unix_path is not None and Path(server.unix_path).exists()
    with redis.Redis(unix_socket_path=server.unix_path) as client:
        assert client.ping()
    pid, directory = server.pid, server.dir
    server.close()
    assert pid is not None and not _alive(pid)
    assert not directory.exists()


def test_start_failure_reports_log_tail_quickly() -> None:
    require_binary("redis-server")
    started = time.monotonic()
    with pytest.raises(RedisServerError, match="no-such-directive") as info:
        RedisServer(config=["no-such-directive yes"])
    assert time.monotonic() - started < 5
    assert "exited with code" in str(info.value)


def test_config_lines_and_acl() -> None:
    require_binary("redis-server")
    with RedisServer(
        config=["maxmemory-policy allkeys-lru"], acl=["u on >pw ~ns:* +@all"]
    ) as server:
        with server.client() as admin:
            (value,) = admin.config_get("maxmemory-policy").values()
            assert value in ("allkeys-lru", b"allkeys-lru")
        with server.client(username="u", password="pw") as client:
            client.set("ns:a", 1)
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.set("other:a", 1)


def test_tls_material_verifies(tls_material: TLSMaterial) -> None:
    openssl = require_binary("openssl")
    for cert in (tls_material.server_cert, tls_material.client_cert):
        out = subprocess.run(
            [openssl, "verify", "-CAfile", str(tls_material.ca_cert), str(cert)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
    text = subprocess.run(
        [openssl, "x509", "-noout", "-ext", "subjectAltName", "-in", str(tls_material.server_cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text


def test_tls_server_answers(tls_redis_server: RedisServer) -> None:
    assert tls_redis_server.url.startswith("rediss://127.0.0.1:")
    with tls_redis_server.client() as client:
        assert client.ping()


def test_cluster_covers_all_slots(redis_cluster: RedisClusterHandle) -> None:
    assert len(redis_cluster.nodes) == 3
    for node in redis_cluster.nodes:
        info = redis_cluster.cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(CLUSTER_SLOTS)
        assert info["cluster_slots_ok"] == str(CLUSTER_SLOTS)
    with redis_cluster.client() as client:
        slots = client.cluster_slots()
        covered = sum(end - start + 1 for start, end in slots)
        assert covered == CLUSTER_SLOTS


@pytest.mark.slow
def test_sentinel_failover_moves_the_master(redis_sentinel: SentinelHandle) -> None:
    handle = redis_sentinel
    old_primary, old_replica = handle.primary, handle.replica
    assert handle.sentinels_env.count(",") == 2
    for sentinel in handle.sentinel_servers:
        assert handle.master_address(sentinel) == old_primary.address
    handle.failover()
    assert handle.primary is old_replica and handle.replica is old_primary
    assert old_replica.role() == "master" and old_primary.role() == "slave"
    for sentinel in handle.sentinel_servers:
        assert handle.master_address(sentinel) == old_replica.address
