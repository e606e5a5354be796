"""What goes over the wire: bounded replies, guarded connections, retry deadlines.

Every connection class we build (:func:`connection_class`) mixes in three things:

- :class:`BoundedParser`: a server that keeps sending (``*2147483647`` then endless
  ``:1``) or trickles a reply must not hang a worker or grow its memory, and
  ``socket_timeout`` alone bounds each read, not a reply. Each reply may declare at
  most the value limit plus headroom and a million items, and must arrive within the
  socket timeout plus a second per 4 MiB it declares.
- :class:`_Guarded`: a connection that fails because one side speaks TLS and the
  other does not says so (:class:`TLSMismatchError`), instead of looking like an
  unreachable server that retrying could bring back.
- :class:`_Deadlined`: inside a retried dcache step, no connect, handshake or read
  outlasts what is left of ``REDIS_CACHE_RETRY_DEADLINE``.
"""

from __future__ import annotations

import functools
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import redis
from redis._parsers.resp2 import _RESP2Parser
from redis._parsers.socket import SocketBuffer
from redis.connection import AbstractConnection

from . import retry
from .config import Settings

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
def parser_for(limits: _Limits) -> type[BoundedParser]:
    return type("BoundedParser", (BoundedParser,), {"limits": limits})


@functools.lru_cache(maxsize=64)
def _with_errors(parser: type[BoundedParser], other: Any) -> type[BoundedParser]:
    errors = getattr(other, "EXCEPTION_CLASSES", parser.EXCEPTION_CLASSES)
    return type("BoundedParser", (parser,), {"EXCEPTION_CLASSES": errors})


def limits(settings: Settings) -> _Limits:
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
            f"{self.host}:{self.port} speaks TLS and REDIS_CACHE_URL does not: use a rediss:// URL"
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
def connection_class(base: type, parser: type[BoundedParser]) -> type:
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


def classes(settings: Settings) -> Callable[[type], type]:
    parser = parser_for(limits(settings))
    return lambda base: connection_class(base, parser)
