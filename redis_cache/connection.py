"""The redis-py client that :class:`~redis_cache.config.Settings` describe, one per process.

The data client never retries inside redis-py (``Retry(NoBackoff(), 0)``, and the
cluster client's own retry count is 0 too): the Redis layer above owns the retry
deadline and the circuit breaker, and hidden retries would multiply every timeout.
Building a client only validates and wires things up; standalone and sentinel clients
connect on first command, a cluster client reads the slot map while being built.

Every connection, in every topology, reads replies with :class:`BoundedParser`: a
server that keeps sending (``*2147483647`` then endless ``:1``) or trickles a reply
must not hang a worker or grow its memory, and ``socket_timeout`` alone bounds each
read, not a reply. Each connection names its worker (``CLIENT SETNAME
redis_cache:<host>:<pid>``), so ``CLIENT LIST`` tells workers apart.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeAlias

import redis
from redis._parsers.resp2 import _RESP2Parser
from redis._parsers.socket import SocketBuffer
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from . import exceptions, retry
from .config import Settings, Target

__all__ = [
    "CLIENT_NAME",
    "PROTOCOL",
    "BoundedParser",
    "Client",
    "ClientProvider",
    "ReplyTimeoutError",
    "ReplyTooLargeError",
    "TLSMismatchError",
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

# What one reply may hold beyond REDIS_CACHE_MAX_VALUE_BYTES (INFO, CLUSTER SLOTS, an
# MGET chunk's framing), how many items in all, and how fast it must at least arrive.
REPLY_HEADROOM_BYTES = 1 << 20
MAX_REPLY_ITEMS = 1_000_000
MIN_TRANSFER_RATE = 4 << 20  # bytes per second a declared bulk adds to the deadline
MAX_LINE = 64 * 1024  # a status, error or length line longer than this is garbage


class ReplyTooLargeError(redis.exceptions.InvalidResponse):
    """A reply declared more bytes or items than any operation of ours reads."""


class ReplyTimeoutError(redis.exceptions.TimeoutError):
    """A reply kept arriving, too slowly, past its deadline."""


class TLSMismatchError(redis.exceptions.ConnectionError):
    """The port speaks TLS and the URL does not (or the reverse): retrying cannot help."""


# --------------------------------------------------------------------------- bounded replies


class _Limits(NamedTuple):
    reply_bytes: int
    reply_seconds: float


class _BoundedBuffer(SocketBuffer):
    """redis-py's socket buffer, charging each reply's declared sizes and time.

    :meth:`begin` starts a reply's budget; every line read is checked (length lines
    against the bytes and items left) before anything is allocated for it, and every
    socket read waits at most until the reply's deadline.
    """

    def __init__(self, sock: socket.socket, read_size: int, timeout: Any, limits: _Limits) -> None:
        super().__init__(sock, read_size, timeout)
        self.limits = limits
        self.begin()

    def begin(self) -> None:
        self._bytes_left = self.limits.reply_bytes
        self._items_left = MAX_REPLY_ITEMS
        self._deadline = time.monotonic() + self.limits.reply_seconds

    def _fill(self, timeout: Any) -> None:
        """One socket read, waiting at most until the reply's deadline."""
        left = self._deadline - time.monotonic()
        if isinstance(timeout, (int, float)) and timeout < left:
            self._read_from_socket(timeout=float(timeout))  # a caller's shorter poll
            return
        if left > 0:
            # Idle for a socket timeout at most, or what a retried dcache step has left.
            idle = _capped(self.socket_timeout)
            wait = left if idle is None else min(left, idle)
            try:
                self._read_from_socket(timeout=wait)
                return
            except redis.exceptions.TimeoutError:
                if wait < left:
                    raise  # idle for a whole socket timeout
        raise ReplyTimeoutError(
            "reply still incomplete at its deadline (REDIS_CACHE_SOCKET_TIMEOUT, plus "
            f"1 s per {MIN_TRANSFER_RATE >> 20} MiB declared)"
        )

    def _charge(self, line: bytes) -> None:
        self._bytes_left -= len(line)
        kind = line[:1]
        if kind in b"$*%~>" and line[1:2] != b"-":  # a length: bulk or aggregate
            try:
                count = int(line[1:])
            except ValueError:
                return  # the parser reports the protocol error
            if kind == b"$":
                self._bytes_left -= count
                self._deadline += count / MIN_TRANSFER_RATE
            else:
                self._items_left -= count * (2 if kind == b"%" else 1)
        if self._bytes_left < 0 or self._items_left < 0:
            raise ReplyTooLargeError(
                f"reply larger than {self.limits.reply_bytes} bytes or {MAX_REPLY_ITEMS} items"
            )

    def readline(self, timeout: Any = None) -> bytes:
        buf = self._buffer
        data = buf.readline()
        while not data.endswith(b"\r\n"):
            if len(data) > MAX_LINE:
                raise ReplyTooLargeError(f"reply line longer than {MAX_LINE} bytes")
            self._fill(timeout)
            data += buf.readline()
        self._charge(data)
        return data[:-2]

    def read(self, length: int, timeout: Any = None) -> bytes:
        # _charge has accepted `length` when its header line was read.
        while self.unread_bytes() < length + 2:
            self._fill(timeout)
        return super().read(length)


class BoundedParser(_RESP2Parser):
    """redis-py's RESP2 parser over a :class:`_BoundedBuffer`; limits set per subclass."""

    limits: ClassVar[_Limits] = _Limits(64 << 20, 5.0)

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)  # type: ignore[no-untyped-call]
        self._buffer = _BoundedBuffer(
            connection._sock, self.socket_read_size, connection.socket_timeout, self.limits
        )

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._buffer is not None:
            self._buffer.begin()
        return super().read_response(*args, **kwargs)


@functools.lru_cache(maxsize=64)
def _parser_for(limits: _Limits) -> type[BoundedParser]:
    return type("BoundedParser", (BoundedParser,), {"limits": limits})


@functools.lru_cache(maxsize=64)
def _with_errors(parser: type[BoundedParser], other: Any) -> type[BoundedParser]:
    errors = getattr(other, "EXCEPTION_CLASSES", parser.EXCEPTION_CLASSES)
    return type("BoundedParser", (parser,), {"EXCEPTION_CLASSES": errors})


def _limits(settings: Settings) -> _Limits:
    return _Limits(settings.max_value_bytes + REPLY_HEADROOM_BYTES, settings.socket_timeout)


# --------------------------------------------------------------------------- connections


class _Guarded:
    """Mixed into each redis-py connection class: the bounded parser, and a hint when a
    connection fails because one side speaks TLS and the other does not."""

    parser: ClassVar[type[BoundedParser]] = BoundedParser
    host: str
    port: int
    socket_connect_timeout: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parser_class"] = self.parser
        super().__init__(*args, **kwargs)

    def set_parser(self, parser_class: Any) -> None:
        """Keep the bounded parser when redis-py swaps in its own (redis-py 5's cluster
        client sets ``ClusterParser`` on connect), taking over that one's error table."""
        if not issubclass(parser_class, BoundedParser):
            parser_class = _with_errors(self.parser, parser_class)
        super().set_parser(parser_class)  # type: ignore[misc]

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            hint = self._mismatch(exc)
            if hint is None:
                raise
            raise TLSMismatchError(hint) from exc

    def _mismatch(self, exc: Exception) -> str | None:
        return None


class _PlainGuarded(_Guarded):
    def _mismatch(self, exc: Exception) -> str | None:
        # Refused or unreachable is not a mismatch; a reset before the first reply may be.
        if "connecting to" in str(exc) or not _speaks_tls(self.host, self.port, self._probe):
            return None
        return (
            f"{self.host}:{self.port} speaks TLS and REDIS_CACHE_URL does not: "
            "use a rediss:// URL"
        )

    @property
    def _probe(self) -> float:
        return _capped(self.socket_connect_timeout or 1.0) or 1.0


class _TLSGuarded(_PlainGuarded):
    def _mismatch(self, exc: Exception) -> str | None:
        if isinstance(exc, redis.ConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return None  # TLS works; the certificate does not verify (see translate)
        if not _speaks_plain_redis(self.host, self.port, self._probe):
            return None
        return (
            f"{self.host}:{self.port} does not speak TLS: use a redis:// URL, or point "
            "rediss:// at the server's tls-port"
        )


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except (OSError, ValueError):
        return False


def _speaks_plain_redis(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` answers a plain-text PING like a Redis server."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


@functools.lru_cache(maxsize=64)
def _connection_class(base: type, parser: type[BoundedParser]) -> type:
    ssl_based = issubclass(base, redis.SSLConnection)
    mixin: type[_Guarded] = _TLSGuarded if ssl_based else _PlainGuarded
    if issubclass(base, redis.UnixDomainSocketConnection):
        mixin = _Guarded
    return type(base.__name__, (mixin, _Deadlined, base), {"parser": parser})


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


def _classes(settings: Settings) -> Callable[[type], type]:
    parser = _parser_for(_limits(settings))
    return lambda base: _connection_class(base, parser)


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
    bounded = _classes(settings)
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
    node_pool = type("_NodePool", (_NodePool,), {"parser": _parser_for(_limits(settings))})
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

    parser: ClassVar[type[BoundedParser]] = BoundedParser

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL)
        base = kwargs.get("connection_class", redis.Connection)
        kwargs["connection_class"] = _connection_class(base, self.parser)
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
    parser = _parser_for(_limits(settings))
    for node in sentinel.sentinels:  # discovery replies are bounded too
        node.connection_pool.connection_kwargs["parser_class"] = parser
    base = SentinelManagedSSLConnection if target.tls else SentinelManagedConnection
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service,
        connection_class=_classes(settings)(base),
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
