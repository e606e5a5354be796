"""The redis-py client that :class:`~redis_cache.config.Settings` describe, one per process.

The data client never retries inside redis-py (``Retry(NoBackoff(), 0)``, and the
cluster client's own retry count is 0 too): the Redis layer above owns the retry
deadline and the circuit breaker, and hidden retries would multiply every timeout.
Building a client only validates and wires things up; standalone and sentinel clients
connect on first command, a cluster client reads the slot map while being built.

Every connection, in every topology, is one of :mod:`redis_cache.wire`'s classes:
bounded replies, TLS-mismatch hints and retry deadlines. Each connection names its
worker (``CLIENT SETNAME redis_cache:<host>:<pid>``), so ``CLIENT LIST`` tells
workers apart.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from . import exceptions, wire
from .config import Settings, Target

__all__ = [
    "CLIENT_NAME",
    "PROTOCOL",
    "Client",
    "ClientProvider",
    "build_client",
    "client_name",
    "is_cluster",
    "node_client_for_key",
    "node_name_for_key",
    "primary_clients",
]

Client: TypeAlias = redis.Redis | RedisCluster

CLIENT_NAME = "redis_cache"  # every connection's name starts with it: redis_cache:<host>:<pid>
# Idle connections are PINGed before reuse after this many seconds, so a half-open
# socket (server gone without FIN) costs one socket_timeout instead of a wrong answer.
HEALTH_CHECK_INTERVAL = 30

# redis-py 8 speaks RESP3 by default, and with it turns on "maintenance notifications",
# which may relax our socket timeouts and skip the pool's stale-socket check on checkout.
# RESP2 keeps one reply shape (the one fakeredis gives too), needs no HELLO round trip
# on connect, and works with servers older than Redis 6.
PROTOCOL = 2

# --------------------------------------------------------------------------- kwargs


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def client_name() -> str:
    """``redis_cache:<host>:<pid>``: what ``CLIENT LIST`` shows for this worker.

    ``CLIENT SETNAME`` refuses spaces and anything outside ``!``..``~``; such host
    name characters become ``_``. Computed when a client is built, so a forked child
    (which builds its own) names itself.
    """
    host = re.sub(r"[^!-~]", "_", socket.gethostname()) or "unknown"
    return f"{CLIENT_NAME}:{host}:{os.getpid()}"


def _no_client_info() -> dict[str, Any]:
    """No ``CLIENT SETINFO`` on connect: one round trip less, and a guarded sentinel
    refuses it before authentication. redis-py 8 spells it ``driver_info=None``."""
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}


def _common_kwargs(settings: Settings, target: Target) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "client_name": client_name(),
        "decode_responses": False,
        "protocol": PROTOCOL,
        "retry": _no_retry(),
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }


def _tls_kwargs(settings: Settings, target: Target) -> dict[str, Any]:
    """``ssl_*`` arguments, after checking that every named file loads.

    Checked now because redis-py only reads them on connect, where a typo would look
    like an unreachable server; and an encrypted key would make OpenSSL prompt on a tty.
    """
    if not target.tls:
        return {}
    ca, cert, key = settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
    if key and not cert:
        raise _Invalid("REDIS_CACHE_TLS_KEY_FILE is set without REDIS_CACHE_TLS_CERT_FILE")
    named = {
        "REDIS_CACHE_TLS_CA_FILE": ca,
        "REDIS_CACHE_TLS_CERT_FILE": cert,
        "REDIS_CACHE_TLS_KEY_FILE": key,
    }
    for variable, path in named.items():
        if path and (not os.path.isfile(path) or not os.access(path, os.R_OK)):
            raise _Invalid(f"{variable}={path!r} is not a readable file")
    context = ssl.create_default_context()
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise _Invalid(f"REDIS_CACHE_TLS_CA_FILE={ca!r} holds no usable CA: {exc}") from exc
    if cert:
        try:
            context.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise _Invalid(
                f"REDIS_CACHE_TLS_CERT_FILE/KEY_FILE do not load as an unencrypted "
                f"certificate and matching key: {exc}"
            ) from exc
    # Without a CA file the system trust store verifies the server: never unverified.
    return {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": ca,
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_check_hostname": target.check_hostname,
    }


class _Invalid(Exception):
    """A settings problem found while building; its text is safe to show (no secrets)."""


# --------------------------------------------------------------------------- builders


def _build_standalone(settings: Settings, target: Target) -> redis.Redis:
    bounded = wire.classes(settings)
    kwargs = _common_kwargs(settings, target)
    if target.path is not None:
        pool = redis.ConnectionPool(
            connection_class=bounded(redis.UnixDomainSocketConnection), path=target.path, **kwargs
        )
    else:
        base = redis.SSLConnection if target.tls else redis.Connection
        pool = redis.ConnectionPool(
            connection_class=bounded(base),
            host=target.host,
            port=target.port,
            **kwargs,
            **_tls_kwargs(settings, target),
        )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def _build_cluster(settings: Settings, target: Target) -> RedisCluster:
    kwargs = _common_kwargs(settings, target)
    # RedisCluster silently drops health_check_interval (not in its REDIS_ALLOWED_KEYS),
    # and takes no connection class: every node's pool is a _NodePool, which sets both.
    # A cluster has database 0 only (config refuses another).
    kwargs.pop("health_check_interval")
    kwargs.pop("db")
    node_pool = type("_NodePool", (_NodePool,), {"parser": wire.parser_for(wire.limits(settings))})
    # ``retry`` is the cluster client's own count of retries after connection errors,
    # timeouts and CLUSTERDOWN (redis-py 8 default: 10 with backoff); node connections
    # get 0 retries from redis-py itself. MOVED/ASK redirects are still followed: that
    # is routing, not retrying. The seed URL carries no credentials (kwargs do).
    scheme = "rediss" if target.tls else "redis"
    return RedisCluster.from_url(
        f"{scheme}://{_bracketed(target.host or '')}:{target.port}",
        connection_pool_class=node_pool,
        **kwargs,
        **_tls_kwargs(settings, target),
    )


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _NodePool(redis.ConnectionPool):
    """A cluster node's pool: our health check interval and bounded connections."""

    parser: ClassVar[type[wire.BoundedParser]] = wire.BoundedParser

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL)
        base = kwargs.get("connection_class", redis.Connection)
        kwargs["connection_class"] = wire.connection_class(base, self.parser)
        super().__init__(**kwargs)


def _sentinel_auth_on_demand(username: str | None, password: str) -> Callable[[Any], None]:
    """A ``redis_connect_func`` that authenticates to a sentinel only if it asks.

    Sentinels often run without a password even when the data nodes have one, and
    sending AUTH to a server without one fails; so connect plainly, PING, and answer
    a NOAUTH with the data nodes' credentials.
    """

    def on_connect(connection: Any) -> None:
        connection.on_connect()  # handshake without credentials: none are configured on it
        connection.send_command("PING", check_health=False)
        try:
            # Keep the socket on an error reply; redis-py disconnects if we raise.
            connection.read_response(disconnect_on_error=False)
        except redis.AuthenticationError:  # NOAUTH
            _skip_reply_raised_for(connection)
            args = (username, password) if username else (password,)
            connection.send_command("AUTH", *args, check_health=False)
            if connection.read_response(disconnect_on_error=False) not in (b"OK", "OK"):
                raise redis.AuthenticationError("sentinel refused the credentials") from None

    return on_connect


def _skip_reply_raised_for(connection: Any) -> None:
    """Drop the error reply the parser just raised for.

    redis-py's pure-Python parser rewinds its buffer to the start of a reply it
    raises for, so the next read would return the same NOAUTH again (hiredis
    consumes it). Seen with redis-py 8.1 without hiredis installed.
    """
    buffer = getattr(getattr(connection, "_parser", None), "_buffer", None)
    if buffer is not None and hasattr(buffer, "unread_bytes") and buffer.unread_bytes():
        buffer.readline()
        buffer.purge()


def _sentinel_kwargs(
    settings: Settings, username: str | None, password: str | None, tls_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Connection arguments for the sentinels themselves: our timeouts and TLS, RESP2 (a
    RESP3 HELLO would be refused before we could authenticate), no retries (discovery
    walks the list anyway), no CLIENT SETINFO (NOAUTH on a guarded sentinel), and the
    data nodes' credentials only if a sentinel asks for them."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "retry": _no_retry(),
        "protocol": PROTOCOL,
        **_no_client_info(),
        **tls_kwargs,
    }
    if tls_kwargs:
        kwargs["ssl"] = True
    if password:
        kwargs["redis_connect_func"] = _sentinel_auth_on_demand(username, password)
    return kwargs


def _build_sentinel(settings: Settings, target: Target) -> redis.Redis:
    """Master client via the sentinels; the URL (if any) gives only user, password, db, TLS."""
    tls_kwargs = _tls_kwargs(settings, target)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(settings, target.username, target.password, tls_kwargs),
    )
    parser = wire.parser_for(wire.limits(settings))
    for node in sentinel.sentinels:  # discovery replies are bounded too
        node.connection_pool.connection_kwargs["parser_class"] = parser
    base = SentinelManagedSSLConnection if target.tls else SentinelManagedConnection
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service,
        connection_class=wire.classes(settings)(base),
        **_common_kwargs(settings, target),
        **tls_kwargs,
    )
    return client


def build_client(settings: Settings) -> Client:
    """The client ``settings`` describe: standalone, TLS, unix socket, sentinel or cluster.

    Raises :class:`~redis_cache.exceptions.RemoteUnavailableError` naming
    ``settings.server_name`` (never credentials) if it cannot be built.
    """
    try:
        target = settings.target
        if target is None:
            raise _Invalid("neither REDIS_CACHE_URL nor REDIS_CACHE_SENTINELS is set")
        if target.topology == "sentinel":
            return _build_sentinel(settings, target)
        if target.topology == "cluster":
            return _build_cluster(settings, target)
        return _build_standalone(settings, target)
    except (_Invalid, exceptions.InvalidSettingError) as exc:
        raise exceptions.RemoteUnavailableError(
            f"cannot use Redis at {settings.server_name}: {exc}"
        ) from exc
    except (redis.RedisError, RedisClusterException, ValueError, TypeError, OSError) as exc:
        # Cluster discovery failures and redis-py argument checks; their texts name
        # hosts, ports and parameters, not credentials.
        raise exceptions.RemoteUnavailableError(
            f"cannot use Redis at {settings.server_name}: {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- cluster nodes


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (else one server: standalone or sentinel)."""
    return isinstance(client, RedisCluster)


def primary_clients(client: Any) -> list[redis.Redis]:
    """A plain client per primary: every node of a cluster, else ``client`` itself."""
    if is_cluster(client):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def node_client_for_key(client: Any, key: str) -> redis.Redis:
    """A plain client of the node holding ``key`` (``client`` itself outside a cluster)."""
    if is_cluster(client):
        return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-any-return]
    return client  # type: ignore[no-any-return]


def node_name_for_key(client: Any, key: str) -> str:
    """``host:port`` of the node holding ``key`` on a cluster; ``""`` elsewhere."""
    return str(client.get_node_from_key(key).name) if is_cluster(client) else ""


# --------------------------------------------------------------------------- per-process


class ClientProvider:
    """One client per process, built on first :meth:`get`, thread-safe, fork- and spawn-safe.

    A forked child never uses or closes the parent's client: the at-fork hook (and a
    pid check, for forks that bypass it) makes the child build its own, named after
    its own pid. The inherited client is parked, not dropped: collecting it would run
    redis-py's pool ``reset()``, which in 8.x takes the pool lock inherited from the
    parent, and that lock may have been held by another parent thread at fork time (a
    deadlock in the child). Its sockets stay untouched either way, since redis-py only
    ``shutdown()``s a socket in the process that opened it. Pickling (spawn) carries
    only the settings.
    """

    def __init__(
        self, settings: Settings, factory: Callable[[Settings], Client] = build_client
    ) -> None:
        self._setup(settings, factory)

    def _setup(self, settings: Settings, factory: Callable[[Settings], Client]) -> None:
        self._settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._client_pid = 0
        _PROVIDERS.add(self)

    @property
    def settings(self) -> Settings:
        return self._settings

    def get(self) -> Client:
        """This process's client, built on first use (errors: ``RemoteUnavailableError``)."""
        if self._client is not None and self._client_pid != os.getpid():
            self._forget_inherited()
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._factory(self._settings)
                self._client_pid = os.getpid()
            return self._client

    def close(self) -> None:
        """Close this process's client (and its sentinel connections); ``get`` rebuilds."""
        with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            if self._client_pid != os.getpid():
                _INHERITED.append(client)
                return
        pool = getattr(client, "connection_pool", None)
        client.close()
        if isinstance(pool, SentinelConnectionPool):
            pool.sentinel_manager.close()

    def _forget_inherited(self) -> None:
        """In a forked child: a fresh lock (the old one may be held forever) and no client."""
        self._lock = threading.Lock()
        if self._client is not None and self._client_pid != os.getpid():
            _INHERITED.append(self._client)
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self._settings, "factory": self._factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["settings"], state["factory"])

    def __repr__(self) -> str:
        return f"<ClientProvider {self._settings.server_name}>"


_PROVIDERS: weakref.WeakSet[ClientProvider] = weakref.WeakSet()
# Clients a forked child inherited: kept referenced, never used or closed (see above).
_INHERITED: list[Client] = []


def _after_fork_in_child() -> None:
    for provider in list(_PROVIDERS):
        provider._forget_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
