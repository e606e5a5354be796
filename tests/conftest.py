"""Shared fixtures. Real servers come from ``tests.support.servers`` (importable without pytest).

Servers that tests may destroy are function-scoped (``fresh_redis_server``,
``redis_sentinel``); shared ones are session-scoped and tests isolate themselves by
prefixing every key with the ``namespace`` fixture. Fixtures that need a binary call
``require_binary`` first: missing binaries skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import (
    RedisClusterHandle,
    RedisServer,
    SentinelHandle,
    TLSMaterial,
    make_tls_material,
    require_binary,
    require_tls,
    start_cluster,
    start_sentinel_set,
)

# --------------------------------------------------------------------------- plain values


@pytest.fixture
def namespace() -> str:
    """A key prefix unique to this test (``t-<8 hex>``) on the shared servers."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tmp_cache_dir(tmp_path: Path) -> Path:
    """An empty directory to use as ``REDIS_CACHE_DIR``."""
    path = tmp_path / "redis_cache"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One plain server (TCP and unix socket) for the session; do not kill or flush it."""
    require_binary("redis-server")
    with RedisServer(unix_socket=True) as server:
        yield server


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A server of this test's own: kill, restart or pause it at will."""
    require_binary("redis-server")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterHandle]:
    """Three masters, all 16384 slots covered; shared, so use ``namespace`` in keys."""
    require_binary("redis-server")
    require_binary("redis-cli")
    with start_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelHandle]:
    """Primary, replica and three sentinels (``mymaster``), new per test: failover changes it."""
    require_binary("redis-server")
    with start_sentinel_set("mymaster") as handle:
        yield handle


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert, all PEM."""
    require_binary("openssl")
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_redis_server(tls_material: TLSMaterial) -> Iterator[RedisServer]:
    """A TLS-only server (``tls-auth-clients optional``) using ``tls_material``."""
    require_binary("redis-server")
    require_tls(tls_material)
    with RedisServer(tls=tls_material, tls_auth_clients="optional") as server:
        yield server
