"""Remote failures that retrying cannot fix, or that never end (issue 9, items 22 and 24).

- A server that keeps sending (``*2147483647`` then endless ``:1``), declares a huge
  bulk, or trickles a reply: every reply is bounded in size and in time, in every
  topology, so ``fcache`` fails open instead of hanging and growing.
- Permanent errors (TLS on one side only, a certificate that does not verify,
  refused credentials or rights) are marked ``transient=False`` with a hint of what
  is likely wrong, never a credential; the retry loop gives up on them at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_cache import connection, exceptions, wire
from redis_cache.connection import build_client
from redis_cache.interfaces import FastCache
from redis_cache.layers.base import EntryKey
from redis_cache.layers.redis import RedisLayer
from redis_cache.wire import BoundedParser
from tests.support.helpers import checkout, make_settings
from tests.support.servers import (
    RedisClusterHandle,
    RedisServer,
    SentinelHandle,
    TLSMaterial,
    free_port,
)

pytestmark = pytest.mark.real_redis

KEY = EntryKey("tests.kernel", "0" * 64, "fcache")
PASSWORD = "pw-Tq9-never-shown"


def kernel(x: int) -> tuple[int, str]:
    return (x, "kernel")


# --------------------------------------------------------------------------- a bad server


class MisbehavingServer:
    """A TCP server that speaks just enough RESP to pass the connection handshake, then
    answers every other command with ``head`` followed by ``chunk`` repeated, at
    ``interval`` seconds per chunk, until ``cap`` bytes are sent or the client hangs up.

    ``gave_up`` counts replies the client abandoned before the cap: a client that
    bounds its replies hangs up; one that does not reads to the cap.
    """

    def __init__(self, head: bytes, chunk: bytes, *, cap: int, interval: float = 0.0) -> None:
        self.head, self.chunk, self.cap, self.interval = head, chunk, cap, interval
        self.gave_up = 0
        self.completed = 0
        self.sent: list[int] = []
        self.flooded = threading.Event()  # set when a reply ended, either way
        self._listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(sock,), daemon=True).start()

    def _talk(self, sock: socket.socket) -> None:
        with sock:
            reader = sock.makefile("rb")
            while True:
                command = _read_command(reader)
                if command is None:
                    return
                name = command[0].upper()
                if name in (b"CLIENT", b"SELECT", b"AUTH", b"HELLO", b"PING", b"READONLY"):
                    sock.sendall(b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")
                    continue
                self._flood(sock)
                return

    def _flood(self, sock: socket.socket) -> None:
        sent = 0
        try:
            sock.sendall(self.head)
            while sent < self.cap:
                sock.sendall(self.chunk)
                sent += len(self.chunk)
                if self.interval:
                    time.sleep(self.interval)
        except OSError:  # the client hung up
            self.gave_up += 1
        else:
            self.completed += 1
        self.sent.append(sent)
        self.flooded.set()

    def outcome(self) -> tuple[int, int]:
        """``(gave_up, completed)`` once a reply ended (at the cap, at the latest)."""
        assert self.flooded.wait(120), "no reply was ever requested"
        return self.gave_up, self.completed


def _read_command(reader: Any) -> list[bytes] | None:
    line = reader.readline()
    if not line.startswith(b"*"):
        return None
    parts = []
    for _ in range(int(line[1:])):
        size = int(reader.readline()[1:])
        parts.append(reader.read(size + 2)[:-2])
    return parts


@pytest.fixture
def flood() -> Iterator[MisbehavingServer]:
    server = MisbehavingServer(b"*2147483647\r\n", b":1\r\n" * 8192, cap=32 << 20)
    yield server
    server.close()


def fail_open_call(tmp_path: Path, url: str, **settings: Any) -> FastCache:
    cache = FastCache(make_settings(tmp_path, url=url, stats_interval=0, **settings))
    assert cache.record()(kernel)(1) == (1, "kernel")  # computed: the remote failed open
    return cache


# --------------------------------------------------------------------------- item 22


def test_an_endless_aggregate_is_refused_at_its_header(
    tmp_path: Path, flood: MisbehavingServer
) -> None:
    cache = fail_open_call(tmp_path, flood.url, socket_timeout=2.0)
    try:
        assert cache.stats().remote_errors >= 1
        assert flood.outcome() == (1, 0)
    finally:
        cache.close()
    assert max(flood.sent) < 8 << 20  # of the 32 MiB it would have sent


def test_a_huge_bulk_is_refused_before_it_is_read(tmp_path: Path) -> None:
    server = MisbehavingServer(b"$2147483647\r\n", b"x" * 65536, cap=32 << 20)
    try:
        layer = RedisLayer(make_settings(tmp_path, url=server.url, socket_timeout=2.0))
        with pytest.raises(exceptions.RemoteError) as info:
            layer.get(KEY)
        layer.close()
        assert server.outcome() == (1, 0)
    finally:
        server.close()
    assert info.value.transient is False
    assert "REDIS_CACHE_MAX_VALUE_BYTES" in str(info.value)


def test_a_trickled_reply_is_bounded_in_time(tmp_path: Path) -> None:
    # Each byte arrives well within the socket timeout; the reply never completes.
    server = MisbehavingServer(b"$1000\r\n", b"x", cap=400, interval=0.02)
    try:
        cache = fail_open_call(tmp_path, server.url, socket_timeout=0.3)
        cache.close()
        assert server.outcome() == (1, 0)
    finally:
        server.close()


def test_an_mget_over_the_reply_limit_is_split(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    settings = make_settings(tmp_path, url=redis_server.url, namespace=namespace,
                             max_value_bytes=4096)  # fmt: skip
    layer = RedisLayer(settings)
    keys = [EntryKey("tests.kernel", f"{i:064x}", "fcache") for i in range(600)]
    try:
        for key in keys:  # 600 x 3 KiB: 1.8 MiB, over one reply's 4 KiB + 1 MiB
            layer.insert(key, bytes([len(key.digest) % 251]) * 3072)
        values = layer.get_many(keys)
    finally:
        layer.close()
    assert all(v is not None and len(v) == 3072 for v in values)


def live_parser(client: redis.Redis) -> Any:
    pool = client.connection_pool
    conn = checkout(pool)
    try:
        conn.connect()
        return conn._parser
    finally:
        pool.release(conn)


@pytest.mark.parametrize("topology", ["standalone", "unix", "tls", "sentinel", "cluster"])
def test_every_topology_reads_with_the_bounded_parser(
    request: pytest.FixtureRequest, tmp_path: Path, topology: str
) -> None:
    settings: dict[str, Any] = {}
    if topology in ("standalone", "unix"):
        server: RedisServer = request.getfixturevalue("redis_server")
        settings["url"] = server.url if topology == "standalone" else f"unix://{server.unix_path}"
    elif topology == "tls":
        tls_server: RedisServer = request.getfixturevalue("tls_redis_server")
        material: TLSMaterial = request.getfixturevalue("tls_material")
        settings.update(url=tls_server.url, tls_ca_file=str(material.ca_cert))
    elif topology == "sentinel":
        sentinel: SentinelHandle = request.getfixturevalue("redis_sentinel")
        settings.update(url=None, sentinels=tuple(sentinel.sentinels))
    else:
        cluster: RedisClusterHandle = request.getfixturevalue("redis_cluster")
        settings.update(url=cluster.url, cluster=True)
    client = build_client(make_settings(tmp_path, **settings))
    try:
        assert client.ping()
        nodes = connection.primary_clients(client)
        for node in nodes:
            parser = live_parser(node)
            assert isinstance(parser, BoundedParser), type(parser)
            assert parser.limits.reply_bytes == 64 * 1024 * 1024 + wire.REPLY_HEADROOM_BYTES
        assert len(nodes) == (3 if topology == "cluster" else 1)
    finally:
        client.close()


# --------------------------------------------------------------------------- item 24


def error_of(tmp_path: Path, url: str, **settings: Any) -> exceptions.RemoteError:
    layer = RedisLayer(make_settings(tmp_path, url=url, connect_timeout=1.0, **settings))
    try:
        with pytest.raises(exceptions.RemoteError) as info:
            layer.get(KEY)
    finally:
        layer.close()
    assert PASSWORD not in str(info.value)
    return info.value


def test_plain_url_against_a_tls_port_is_permanent(
    tmp_path: Path, tls_redis_server: RedisServer
) -> None:
    error = error_of(tmp_path, f"redis://:{PASSWORD}@127.0.0.1:{tls_redis_server.port}/0")
    assert error.transient is False
    assert "rediss://" in str(error)


def test_tls_url_against_a_plain_port_is_permanent(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    error = error_of(tmp_path, f"rediss://:{PASSWORD}@127.0.0.1:{redis_server.port}/0")
    assert error.transient is False
    assert "does not speak TLS" in str(error) and "redis://" in str(error)


def test_an_unverified_certificate_is_permanent(
    tmp_path: Path, tls_redis_server: RedisServer
) -> None:
    error = error_of(tmp_path, tls_redis_server.url)  # the system trust store lacks our CA
    assert error.transient is False
    assert "REDIS_CACHE_TLS_CA_FILE" in str(error)


def test_refused_credentials_and_rights_are_permanent(tmp_path: Path) -> None:
    acl = [f"user worker on >{PASSWORD} ~other:* +@all"]
    with RedisServer(acl=acl) as server:
        wrong = error_of(tmp_path, f"redis://worker:not-{PASSWORD}@127.0.0.1:{server.port}/0")
        denied = error_of(tmp_path, f"redis://worker:{PASSWORD}@127.0.0.1:{server.port}/0")
    assert wrong.transient is False and "password" in str(wrong)
    assert denied.transient is False and "doctor" in str(denied)


def test_an_unreachable_server_stays_transient(tmp_path: Path) -> None:
    error = error_of(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    assert error.transient is True


# --------------------------------------------------------------------------- cluster nodes


def test_cluster_node_helpers(
    tmp_path: Path, redis_cluster: RedisClusterHandle, redis_server: RedisServer
) -> None:
    cluster = build_client(make_settings(tmp_path, url=redis_cluster.url, cluster=True))
    plain = build_client(make_settings(tmp_path, url=redis_server.url))
    try:
        assert connection.is_cluster(cluster) and not connection.is_cluster(plain)
        assert connection.primary_clients(plain) == [plain]
        assert connection.node_client_for_key(plain, "k") is plain
        assert connection.node_name_for_key(plain, "k") == ""
        names = {connection.node_name_for_key(cluster, f"k{i}") for i in range(50)}
        assert len(names) == 3
        node = connection.node_client_for_key(cluster, "{tag}x")
        node.set("{tag}x", b"1")
        assert cluster.get("{tag}x") == b"1"
    finally:
        cluster.close()
        plain.close()
