"""The redis-py client that :class:`~redis_cache.config.Settings` describe, one per process.

The data client never retries inside redis-py (``Retry(NoBackoff(), 0)``, and the
cluster client's own retry count is 0 too): the Redis layer above owns the retry
deadline and the circuit breaker, and hidden retries would multiply every timeout.
Building a client only validates and wires things up; standalone and sentinel clients
connect on first command, a cluster client reads the slot map while being built.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection, parse_url
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from . import exceptions, retry
from .config import Settings

__all__ = ["CLIENT_NAME", "PROTOCOL", "Client", "ClientProvider", "build_client"]

Client: TypeAlias = redis.Redis | RedisCluster

CLIENT_NAME = "redis_cache"
# Idle connections are PINGed before reuse after this many seconds, so a half-open
# socket (server gone without FIN) costs one socket_timeout instead of a wrong answer.
HEALTH_CHECK_INTERVAL = 30

# redis-py 8 speaks RESP3 by default, and with it turns on "maintenance notifications",
# which may relax our socket timeouts and skip the pool's stale-socket check on checkout.
# RESP2 keeps one reply shape (the one fakeredis gives too), needs no HELLO round trip
# on connect, and works with servers older than Redis 6.
PROTOCOL = 2

# Query parameters a REDIS_CACHE_URL may carry. Everything else is refused: timeouts and
# retries are ours to set, and redis-py would pass unknown names on to the connection
# class, failing only at the first command with a TypeError.
_QUERY_ALLOWED = frozenset({"db", "username", "password"})
_QUERY_ALLOWED_TLS = _QUERY_ALLOWED | {"ssl_check_hostname"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_DB_PATH = re.compile(r"^/?(\d+)?/?$")

_TLS_VARIABLES = (
    ("REDIS_CACHE_TLS_CA_FILE", "tls_ca_file"),
    ("REDIS_CACHE_TLS_CERT_FILE", "tls_cert_file"),
    ("REDIS_CACHE_TLS_KEY_FILE", "tls_key_file"),
)


class _Invalid(Exception):
    """A settings problem found while building; its text is safe to show (no secrets)."""


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _common_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "client_name": CLIENT_NAME,
        "decode_responses": False,
        "protocol": PROTOCOL,
    }


# --------------------------------------------------------------------------- URL and TLS


def _url_options(url: str) -> tuple[str, dict[str, Any]]:
    """Validate ``url`` and return its scheme and redis-py's own parse of it.

    Error texts name parameters and parts, never values: a malformed URL may have a
    password fragment wherever urllib thinks the port or query is.
    """
    # Errors are raised outside the except blocks: `from None` only hides the
    # original exception, whose text may quote part of a password, and keeps it
    # reachable as __context__.
    try:
        parts: urllib.parse.SplitResult | None = urllib.parse.urlsplit(url)
        parts.port  # type: ignore[union-attr]  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None:
        raise _Invalid("REDIS_CACHE_URL has an invalid host or port")
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise _Invalid("REDIS_CACHE_URL must start with redis://, rediss:// or unix://")
    if scheme != "unix" and not _DB_PATH.match(parts.path):
        raise _Invalid("the path of REDIS_CACHE_URL must be empty or a database number")
    allowed = _QUERY_ALLOWED_TLS if scheme == "rediss" else _QUERY_ALLOWED
    for name in urllib.parse.parse_qs(parts.query):
        if name not in allowed:
            shown = repr(name) if _IDENTIFIER.match(name) else "a query parameter"
            raise _Invalid(
                f"REDIS_CACHE_URL has unsupported {shown} (supported: {', '.join(sorted(allowed))})"
            )
    problem = None
    try:
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        # redis-py's own messages name the parameter only ("Invalid value for 'db' ...").
        problem = str(exc)
    if problem is not None:
        raise _Invalid(f"REDIS_CACHE_URL is invalid: {problem}")
    return scheme, options


def _tls_kwargs(settings: Settings, tls: bool) -> dict[str, Any]:
    """``ssl_*`` arguments, after checking that every named file loads.

    Checked now because redis-py only reads them on connect, where a typo would look
    like an unreachable server; and an encrypted key would make OpenSSL prompt on a tty.
    """
    given = {
        var: getattr(settings, attr) for var, attr in _TLS_VARIABLES if getattr(settings, attr)
    }
    if not tls:
        if given:
            raise _Invalid(f"{', '.join(given)} set, but TLS needs a rediss:// REDIS_CACHE_URL")
        return {}
    ca = settings.tls_ca_file
    cert = settings.tls_cert_file
    key = settings.tls_key_file
    if key and not cert:
        raise _Invalid("REDIS_CACHE_TLS_KEY_FILE is set without REDIS_CACHE_TLS_CERT_FILE")
    for var, path in given.items():
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise _Invalid(f"{var}={path!r} is not a readable file")
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
    }


# --------------------------------------------------------------------------- builders


# A socket timeout below this would make every read of the attempt fail at once.
_MIN_CAPPED_TIMEOUT = 0.001


def _capped(timeout: float | None) -> float | None:
    """``timeout``, capped by what is left of the retry deadline running on this thread."""
    left = retry.time_left()
    if left is None or (timeout is not None and timeout <= left):
        return timeout
    return max(left, _MIN_CAPPED_TIMEOUT)


class _Deadlined(AbstractConnection):
    """Mixed into every connection class we use: no connect, handshake or read of a
    retried dcache step outlasts ``REDIS_CACHE_RETRY_DEADLINE`` by a socket timeout.

    Outside a retried step (fcache, the renewer, the stats publisher) it changes nothing.
    """

    def _connect(self) -> Any:
        saved = (self.socket_connect_timeout, self.socket_timeout)
        self.socket_connect_timeout = _capped(saved[0])
        self.socket_timeout = _capped(saved[1])  # read by _connect (TLS handshake) only
        try:
            return super()._connect()  # type: ignore[safe-super,no-untyped-call]
        finally:
            self.socket_connect_timeout, self.socket_timeout = saved

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        timeout = _capped(self.socket_timeout)
        sock = self._sock
        if timeout == self.socket_timeout or sock is None:
            return super().read_response(*args, **kwargs)
        sock.settimeout(timeout)
        try:
            return super().read_response(*args, **kwargs)
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.socket_timeout)


_DEADLINED: dict[type, type] = {}


def _deadlined(connection_class: type) -> type:
    """``connection_class`` with :class:`_Deadlined` mixed in (one class per base)."""
    if issubclass(connection_class, _Deadlined):
        return connection_class
    cls = _DEADLINED.get(connection_class)
    if cls is None:
        name = f"Deadlined{connection_class.__name__}"
        cls = _DEADLINED[connection_class] = type(name, (_Deadlined, connection_class), {})
    return cls


class _DeadlinePool(redis.ConnectionPool):
    """A pool whose connections are :class:`_Deadlined` (standalone and cluster nodes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = _deadlined(self.connection_class)


class _DeadlineSentinelPool(SentinelConnectionPool):
    """A sentinel-managed pool whose connections are :class:`_Deadlined`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.connection_class = _deadlined(self.connection_class)


def _build_standalone(settings: Settings, url: str) -> redis.Redis:
    scheme, _ = _url_options(url)
    pool = _DeadlinePool.from_url(
        url,
        retry=_no_retry(),
        **_common_kwargs(settings),
        **_tls_kwargs(settings, scheme == "rediss"),
    )
    return redis.Redis.from_pool(pool)


def _build_cluster(settings: Settings, url: str) -> RedisCluster:
    scheme, _ = _url_options(url)
    if scheme == "unix":
        raise _Invalid("a cluster needs a redis:// or rediss:// seed node, not unix://")
    kwargs = _common_kwargs(settings)
    # RedisCluster silently drops health_check_interval (not in its REDIS_ALLOWED_KEYS),
    # but builds every node's pool from connection_pool_class: set it there.
    kwargs.pop("health_check_interval")
    # ``retry`` is the cluster client's own count of retries after connection errors,
    # timeouts and CLUSTERDOWN (redis-py 8 default: 10 with backoff); node connections
    # get 0 retries from redis-py itself. MOVED/ASK redirects are still followed: that
    # is routing, not retrying.
    return RedisCluster.from_url(
        url,
        retry=_no_retry(),
        connection_pool_class=_HealthCheckedPool,
        **kwargs,
        **_tls_kwargs(settings, scheme == "rediss"),
    )


class _HealthCheckedPool(_DeadlinePool):
    """A cluster node's pool with our health check interval (see ``_build_cluster``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL)
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
        "driver_info": None,
        **tls_kwargs,
    }
    if password:
        kwargs["redis_connect_func"] = _sentinel_auth_on_demand(username, password)
    return kwargs


def _build_sentinel(settings: Settings) -> redis.Redis:
    """Master client via the sentinels; the URL (if any) gives only user, password, db, TLS."""
    tls = False
    credentials: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if settings.url:
        scheme, options = _url_options(settings.url)
        if scheme == "unix":
            raise _Invalid("REDIS_CACHE_SENTINELS cannot be combined with a unix:// URL")
        tls = scheme == "rediss"
        credentials = {k: options[k] for k in ("username", "password", "db") if k in options}
    tls_kwargs = _tls_kwargs(settings, tls)
    if tls:
        tls_kwargs["ssl"] = True
        if "ssl_check_hostname" in options:
            tls_kwargs["ssl_check_hostname"] = options["ssl_check_hostname"]
    sentinel_kwargs = _sentinel_kwargs(
        settings, credentials.get("username"), credentials.get("password"), tls_kwargs
    )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.sentinels), sentinel_kwargs=sentinel_kwargs
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.sentinel_master,
        connection_pool_class=_DeadlineSentinelPool,
        retry=_no_retry(),
        **_common_kwargs(settings),
        **credentials,
        **tls_kwargs,
    )
    return client


def build_client(settings: Settings) -> Client:
    """The client ``settings`` describe: standalone, TLS, unix socket, sentinel or cluster.

    Raises :class:`~redis_cache.exceptions.RemoteUnavailableError` naming
    ``settings.server_name`` (never credentials) if it cannot be built.
    """
    try:
        if settings.sentinels:
            return _build_sentinel(settings)
        if not settings.url:
            raise _Invalid("neither REDIS_CACHE_URL nor REDIS_CACHE_SENTINELS is set")
        if settings.cluster:
            return _build_cluster(settings, settings.url)
        return _build_standalone(settings, settings.url)
    except _Invalid as exc:
        raise exceptions.RemoteUnavailableError(
            f"cannot use Redis at {settings.server_name}: {exc}"
        ) from exc
    except (redis.RedisError, RedisClusterException, ValueError, TypeError, OSError) as exc:
        # Cluster discovery failures and redis-py argument checks; their texts name
        # hosts, ports and parameters, not credentials.
        raise exceptions.RemoteUnavailableError(
            f"cannot use Redis at {settings.server_name}: {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- per-process


class ClientProvider:
    """One client per process, built on first :meth:`get`, thread-safe, fork- and spawn-safe.

    A forked child never uses or closes the parent's client: the at-fork hook (and a
    pid check, for forks that bypass it) makes the child build its own. The inherited
    client is parked, not dropped: collecting it would run redis-py's pool ``reset()``,
    which in 8.x takes the pool lock inherited from the parent, and that lock may have
    been held by another parent thread at fork time (a deadlock in the child). Its
    sockets stay untouched either way, since redis-py only ``shutdown()``s a socket in
    the process that opened it. Pickling (spawn) carries only the settings.
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
