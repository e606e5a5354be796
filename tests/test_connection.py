"""``redis_cache.connection`` against real servers: every topology, TLS, ACL, fork, spawn."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.connection import UnixDomainSocketConnection

from redis_cache import connection as conn_mod
from redis_cache.config import Settings
from redis_cache.connection import CLIENT_NAME, ClientProvider, build_client
from redis_cache.exceptions import RemoteUnavailableError
from tests.support.servers import (
    RedisClusterHandle,
    RedisServer,
    SentinelHandle,
    TLSMaterial,
    free_port,
    make_tls_material,
    require_binary,
    require_tls,
    start_sentinel_set,
)

pytestmark = pytest.mark.real_redis

PASSWORD = "s3cret-Pw-9f"


def settings_for(url: str | None = None, **overrides: Any) -> Settings:
    overrides.setdefault("connect_timeout", 1.0)
    overrides.setdefault("socket_timeout", 2.0)
    return Settings(url=url, **overrides)


def unavailable(settings: Settings) -> RemoteUnavailableError:
    with pytest.raises(RemoteUnavailableError) as info:
        build_client(settings)
    return info.value


# --------------------------------------------------------------------------- standalone


def test_standalone_url_and_policy(redis_server: RedisServer, namespace: str) -> None:
    settings = settings_for(redis_server.url, connect_timeout=0.5, socket_timeout=1.5)
    client = build_client(settings)
    assert isinstance(client, redis.Redis)
    try:
        client.set(f"{namespace}:k", b"\x00\xff")
        assert client.get(f"{namespace}:k") == b"\x00\xff"  # bytes: decode_responses=False
        assert client.client_getname() in (CLIENT_NAME, CLIENT_NAME.encode())
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 1.5
        assert kwargs["socket_connect_timeout"] == 0.5
        assert kwargs["health_check_interval"] == conn_mod.HEALTH_CHECK_INTERVAL
        connection = client.connection_pool.get_connection()
        try:
            assert connection.retry.get_retries() == 0
        finally:
            client.connection_pool.release(connection)
    finally:
        client.close()


def test_no_hidden_retries(fresh_redis_server: RedisServer) -> None:
    """A hung server costs one socket_timeout, a dead one fails at once; a restart heals."""
    server = fresh_redis_server
    client = build_client(settings_for(server.url, connect_timeout=0.3, socket_timeout=0.3))
    try:
        assert client.ping()
        server.pause()
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert time.monotonic() - started < 0.55  # a retry would take >= 0.6 s
        server.resume()
        server.kill()
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert time.monotonic() - started < 0.3
        server.restart()
        assert client.ping()  # the pool reconnects on the next command
    finally:
        client.close()


def test_unix_socket_url(redis_server: RedisServer, namespace: str) -> None:
    assert redis_server.unix_path is not None
    client = build_client(settings_for(f"unix://{redis_server.unix_path}?db=0"))
    assert isinstance(client, redis.Redis)
    try:
        assert issubclass(client.connection_pool.connection_class, UnixDomainSocketConnection)
        client.set(f"{namespace}:u", "1")
        assert client.get(f"{namespace}:u") == b"1"
    finally:
        client.close()


# --------------------------------------------------------------------------- ACL and secrets


def test_acl_user_restricted_to_its_key_pattern() -> None:
    require_binary("redis-server")
    with RedisServer(acl=[f"u on >{PASSWORD} ~ns:* +@all"]) as server:
        url = f"redis://u:{PASSWORD}@127.0.0.1:{server.port}/0"
        settings = settings_for(url)
        assert PASSWORD not in repr(settings)
        assert PASSWORD not in settings.server_name and "u@" not in settings.server_name
        client = build_client(settings)
        try:
            assert PASSWORD not in repr(client)
            client.set("ns:a", 1)
            assert client.get("ns:a") == b"1"
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.set("other:a", 1)
        finally:
            client.close()

        wrong = build_client(settings_for(f"redis://u:not-{PASSWORD}@127.0.0.1:{server.port}/0"))
        try:
            with pytest.raises(redis.AuthenticationError) as info:
                wrong.ping()
            assert PASSWORD not in str(info.value)
        finally:
            wrong.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"redis://u:{PASSWORD}@127.0.0.1:notaport/0", "invalid host or port"),
        (f"redis://u:{PASSWORD}@127.0.0.1:6390/abc", "database number"),
        (f"redis://u:{PASSWORD}@127.0.0.1:6390/0?db=x", "Invalid value for 'db'"),
        (f"redis://u:{PASSWORD}@127.0.0.1:6390/0?socket_timeout=60", "'socket_timeout'"),
        (f"redis://u:{PASSWORD}@127.0.0.1:6390/0?ssl_check_hostname=no", "'ssl_check_hostname'"),
        (f"http://u:{PASSWORD}@127.0.0.1:6390/0", "redis://, rediss:// or unix://"),
    ],
)
def test_bad_urls_are_remote_unavailable_without_credentials(url: str, expected: str) -> None:
    settings = settings_for(url)
    error = unavailable(settings)
    assert expected in str(error)
    assert settings.server_name in str(error)
    for text in (str(error), str(error.__cause__), repr(error.__cause__)):
        assert PASSWORD not in text


@pytest.mark.parametrize("password", ["pass/word", "pa?ss#word", "p@ss:word", "pass%2Fword"])
def test_awkward_passwords_never_leak(password: str) -> None:
    settings = settings_for(f"redis://u:{password}@127.0.0.1:6390/0")
    assert settings.server_name == "redis://127.0.0.1:6390/0"
    try:
        build_client(settings)  # builds without connecting when redis-py can parse the URL
    except RemoteUnavailableError as exc:
        assert "word" not in str(exc)


def test_nothing_configured_is_remote_unavailable() -> None:
    assert "(no remote layer)" in str(unavailable(Settings()))


# --------------------------------------------------------------------------- TLS


def test_tls_verifies_the_server_with_the_ca(
    tls_redis_server: RedisServer, tls_material: TLSMaterial, namespace: str
) -> None:
    for host in ("127.0.0.1", "localhost"):  # the cert's IP and DNS SANs
        url = f"rediss://{host}:{tls_redis_server.port}/0"
        client = build_client(settings_for(url, tls_ca_file=str(tls_material.ca_cert)))
        assert isinstance(client, redis.Redis)
        try:
            client.set(f"{namespace}:{host}", 1)
            assert client.get(f"{namespace}:{host}") == b"1"
            assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
        finally:
            client.close()


def test_tls_rejects_a_server_signed_by_another_ca(
    tls_redis_server: RedisServer, tmp_path: Path
) -> None:
    require_binary("openssl")
    other = make_tls_material(tmp_path / "other")
    client = build_client(settings_for(tls_redis_server.url, tls_ca_file=str(other.ca_cert)))
    try:
        with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
            client.ping()
    finally:
        client.close()


def test_tls_client_certificate(tls_material: TLSMaterial) -> None:
    require_binary("redis-server")
    require_tls(tls_material)
    with RedisServer(tls=tls_material, tls_auth_clients="yes") as server:
        ca = str(tls_material.ca_cert)
        anonymous = build_client(settings_for(server.url, tls_ca_file=ca))
        try:
            with pytest.raises(redis.ConnectionError):
                anonymous.ping()
        finally:
            anonymous.close()
        client = build_client(
            settings_for(
                server.url,
                tls_ca_file=ca,
                tls_cert_file=str(tls_material.client_cert),
                tls_key_file=str(tls_material.client_key),
            )
        )
        try:
            assert client.ping()
        finally:
            client.close()


def test_tls_file_problems_are_remote_unavailable(
    tls_material: TLSMaterial, tmp_path: Path
) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:6390/0"
    missing = unavailable(settings_for(url, tls_ca_file=str(tmp_path / "nope.pem")))
    assert "REDIS_CACHE_TLS_CA_FILE" in str(missing) and "nope.pem" in str(missing)
    assert "rediss://127.0.0.1:6390/0" in str(missing) and PASSWORD not in str(missing)

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "no usable CA" in str(unavailable(settings_for(url, tls_ca_file=str(garbage))))
    mismatched = unavailable(
        settings_for(
            url,
            tls_cert_file=str(tls_material.client_cert),
            tls_key_file=str(tls_material.server_key),
        )
    )
    assert "REDIS_CACHE_TLS_CERT_FILE" in str(mismatched)
    key_only = unavailable(settings_for(url, tls_key_file=str(tls_material.client_key)))
    assert "without REDIS_CACHE_TLS_CERT_FILE" in str(key_only)
    plain = unavailable(
        settings_for("redis://127.0.0.1:6390/0", tls_ca_file=str(tls_material.ca_cert))
    )
    assert "rediss://" in str(plain)


# --------------------------------------------------------------------------- cluster


def test_cluster_hash_tags_and_many_slots(
    redis_cluster: RedisClusterHandle, namespace: str
) -> None:
    client = build_client(settings_for(redis_cluster.url, cluster=True))
    assert isinstance(client, RedisCluster)
    try:
        assert client.retry.get_retries() == 0
        for node in client.get_nodes():
            pool = node.redis_connection.connection_pool
            assert pool.connection_kwargs["health_check_interval"] == conn_mod.HEALTH_CHECK_INTERVAL
            assert pool.connection_kwargs["socket_timeout"] == 2.0
            assert pool.connection_kwargs["protocol"] == conn_mod.PROTOCOL
        tagged = [f"{{abc}}:{namespace}:{i}" for i in range(10)]
        for key in tagged:
            client.set(key, key)
        owners = {client.get_node_from_key(key).name for key in tagged}
        assert len(owners) == 1
        (owner_name,) = owners
        for node in redis_cluster.nodes:
            with node.client() as direct:
                if f"{node.host}:{node.port}" == owner_name:
                    assert direct.exists(*tagged) == len(tagged)
                else:
                    with pytest.raises(redis.exceptions.MovedError):
                        direct.get(tagged[0])

        keys = [f"{{{namespace}-{i}}}:v" for i in range(100)]
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [client.get(key) for key in keys] == [str(i).encode() for i in range(100)]
        assert len({client.get_node_from_key(key).name for key in keys}) == 3
    finally:
        client.close()


def test_cluster_problems_are_remote_unavailable(redis_server: RedisServer) -> None:
    unix = unavailable(settings_for(f"unix://{redis_server.unix_path}", cluster=True))
    assert "unix://" in str(unix)
    nobody = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    error = unavailable(settings_for(nobody, cluster=True, connect_timeout=0.2))
    assert "127.0.0.1" in str(error) and PASSWORD not in str(error)
    not_a_cluster = unavailable(settings_for(redis_server.url, cluster=True))
    assert redis_server.url in str(not_a_cluster)


# --------------------------------------------------------------------------- sentinel


def _write_until_accepted(client: Any, key: str, value: str) -> None:
    """The first write after a failover may meet the demoted primary (READONLY), which
    redis-py turns into a ConnectionError; with no internal retries, we retry once."""
    try:
        client.set(key, value)
    except redis.ConnectionError:
        client.set(key, value)


@pytest.mark.slow
def test_sentinel_follows_failover(redis_sentinel: SentinelHandle, namespace: str) -> None:
    handle = redis_sentinel
    settings = Settings(
        sentinels=tuple(handle.sentinels),
        sentinel_master=handle.master_name,
        connect_timeout=1.0,
        socket_timeout=2.0,
    )
    provider = ClientProvider(settings)
    try:
        client = provider.get()
        client.set(f"{namespace}:before", "1")
        with handle.primary.client() as direct:
            assert direct.get(f"{namespace}:before") == b"1"
        assert handle.sentinels_env in settings.server_name

        handle.failover()

        fresh = ClientProvider(settings)
        try:
            fresh.get().set(f"{namespace}:fresh", "2")
        finally:
            fresh.close()
        _write_until_accepted(client, f"{namespace}:same", "3")
        with handle.primary.client() as direct:  # the new primary
            assert direct.get(f"{namespace}:fresh") == b"2"
            assert direct.get(f"{namespace}:same") == b"3"
            assert direct.get(f"{namespace}:before") == b"1"
    finally:
        provider.close()


@pytest.mark.slow
def test_sentinel_with_passwords_on_data_nodes_and_sentinels(namespace: str) -> None:
    require_binary("redis-server")
    with start_sentinel_set("guarded", password=PASSWORD, sentinel_password=PASSWORD) as handle:
        settings = Settings(
            url=f"redis://:{PASSWORD}@localhost/0",
            sentinels=tuple(handle.sentinels),
            sentinel_master="guarded",
        )
        assert PASSWORD not in settings.server_name
        provider = ClientProvider(settings)
        try:
            provider.get().set(f"{namespace}:k", "v")
            with handle.primary.client() as direct:
                assert direct.get(f"{namespace}:k") == b"v"
        finally:
            provider.close()


def test_sentinel_auth_only_when_asked() -> None:
    """Sentinel connections send AUTH only after a NOAUTH: open sentinels get none."""
    require_binary("redis-server")
    settings = settings_for(None)
    with RedisServer() as open_server, RedisServer(password=PASSWORD) as guarded:
        # An unknown user would fail AUTH (WRONGPASS), so passing proves no AUTH was sent.
        open_client = redis.Redis(
            *open_server.address, **conn_mod._sentinel_kwargs(settings, "nobody", PASSWORD, {})
        )
        guarded_client = redis.Redis(
            *guarded.address, **conn_mod._sentinel_kwargs(settings, None, PASSWORD, {})
        )
        wrong_client = redis.Redis(
            *guarded.address, **conn_mod._sentinel_kwargs(settings, None, "wrong", {})
        )
        with open_client, guarded_client, wrong_client:
            assert open_client.ping()
            assert guarded_client.ping()
            with pytest.raises(redis.AuthenticationError):
                wrong_client.ping()


def test_sentinel_with_unix_url_is_remote_unavailable() -> None:
    settings = Settings(url="unix:///tmp/redis.sock", sentinels=(("127.0.0.1", 26379),))
    error = unavailable(settings)
    assert "sentinel[127.0.0.1:26379]/mymaster" in str(error)


# --------------------------------------------------------------------------- ClientProvider


def test_provider_builds_once_across_threads() -> None:
    calls: list[int] = []
    made = object()

    def factory(settings: Settings) -> Any:
        calls.append(1)
        time.sleep(0.05)
        return made

    provider = ClientProvider(Settings(), factory)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(provider.get())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(r is made for r in results) and len(results) == 16


def test_provider_rebuilds_for_another_pid_and_after_close(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = ClientProvider(settings_for(redis_server.url))
    first = provider.get()
    assert provider.get() is first
    monkeypatch.setattr(conn_mod, "_INHERITED", [])
    provider._client_pid = -1  # as if this process were a fork that skipped the hooks
    second = provider.get()
    assert second is not first
    assert len(conn_mod._INHERITED) == 1 and conn_mod._INHERITED[0] is first
    provider.close()
    third = provider.get()
    assert third is not second and third.ping()
    provider.close()
    first.close()


def test_provider_pickles_without_its_client(redis_server: RedisServer) -> None:
    provider = ClientProvider(settings_for(redis_server.url))
    provider.get()
    clone = pickle.loads(pickle.dumps(provider))
    assert clone._client is None and clone.settings == provider.settings
    assert redis_server.url.split("//")[1] in repr(clone)
    provider.close()


def _report_client_id(provider: ClientProvider, out: Connection, key: str) -> None:
    """Child side: use the provider it was handed and report what it got."""
    try:
        client = provider.get()
        client.set(key, "from-child")
        out.send(("ok", client.client_id(), len(conn_mod._INHERITED)))
    except BaseException as exc:
        out.send(("error", repr(exc), None))
        raise
    finally:
        out.close()


def _run_child(method: str, provider: ClientProvider, key: str) -> tuple[int, Any]:
    ctx = multiprocessing.get_context(method)
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_report_client_id, args=(provider, sender, key))
    process.start()
    sender.close()
    try:
        assert receiver.poll(30), f"{method} child sent nothing"
        status, client_id, parked = receiver.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    assert status == "ok", client_id
    assert process.exitcode == 0
    return client_id, parked


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_process_gets_its_own_connection(
    redis_server: RedisServer, namespace: str, method: str
) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method!r} start method here")
    provider = ClientProvider(settings_for(redis_server.url))
    try:
        parent = provider.get()
        parent_id = parent.client_id()
        child_id, parked = _run_child(method, provider, f"{namespace}:{method}")
        assert child_id != parent_id
        # fork: the inherited client was parked, untouched; spawn: nothing was inherited.
        assert parked == (len(conn_mod._INHERITED) + 1 if method == "fork" else 0)
        # The parent's socket survived the child: same client, same server-side connection.
        assert provider.get() is parent
        assert parent.client_id() == parent_id
        assert parent.get(f"{namespace}:{method}") == b"from-child"
    finally:
        provider.close()


@pytest.mark.slow
def test_fork_while_other_threads_use_the_client(redis_server: RedisServer, namespace: str) -> None:
    """Children forked mid-traffic never touch the parent's pool (no inherited-lock hang)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method here")
    provider = ClientProvider(settings_for(redis_server.url))
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        client = provider.get()
        try:
            while not stop.is_set():
                client.incr(f"{namespace}:n")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        ids = {_run_child("fork", provider, f"{namespace}:c{i}")[0] for i in range(5)}
        assert len(ids) == 5
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        provider.close()
    assert not errors


def test_no_password_fragment_hides_in_the_exception_chain() -> None:
    # urllib reads "Xq7" as the port of "u:Xq7" and its ValueError quotes it.
    settings = settings_for("redis://u:Xq7/Zz?Kk#Yw@127.0.0.1:6390/0")
    error: BaseException | None = unavailable(settings)
    seen = 0
    while error is not None:
        seen += 1
        for fragment in ("Xq7", "Zz", "Kk", "Yw"):
            assert fragment not in str(error)
        error = error.__cause__ or error.__context__
    assert seen >= 1
