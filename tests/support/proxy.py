"""A fault-injecting TCP proxy for tests: threads and sockets, no dependencies.

``FaultProxy(host, port)`` listens on 127.0.0.1 (a free port) and forwards every
connection to ``host:port``. Its mode can be switched at any time and applies to
new and existing connections alike:

- ``pass``: forward both ways.
- ``latency(seconds)``: forward, delaying each chunk in both directions.
- ``drop``: reset (RST, via ``SO_LINGER 0``) every current connection, and reset
  new ones as soon as they are accepted.
- ``blackhole``: accept and read, never forward or answer (a server that accepts
  but never replies; a partition that swallows packets).
- ``half_open``: forward client→server, swallow server→client, keep every socket
  open (a peer that vanished without FIN: the server executes commands whose
  replies never arrive).

A connection that swallowed bytes in either direction is desynchronized: when
the mode goes back to ``pass`` or ``latency`` it is reset instead of resumed,
as a real TCP connection after such a fault would be dead. Connections that
swallowed nothing simply resume.

Each connection has one thread that polls both sockets every ``POLL`` seconds,
so mode changes and ``close()`` take effect within that. ``close()`` stops and
joins every thread.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from typing import Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "latency", "drop", "blackhole", "half_open"]

HOST = "127.0.0.1"
POLL = 0.02
CHUNK = 65536
UPSTREAM_CONNECT_TIMEOUT = 2.0
SEND_TIMEOUT = 5.0
JOIN_TIMEOUT = 10.0


def _reset(sock: socket.socket | None) -> None:
    """Close with RST (SO_LINGER on, timeout 0) rather than FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class _Connection:
    """One proxied connection and the thread that pumps it."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.poisoned = False  # bytes were swallowed: never resume this stream
        self.thread = threading.Thread(
            target=self._run, name=f"fault-proxy-{proxy.port}-conn", daemon=True
        )

    def _connect_upstream(self) -> bool:
        try:
            up = socket.create_connection(self.proxy.target, timeout=UPSTREAM_CONNECT_TIMEOUT)
        except OSError:
            return False
        up.settimeout(SEND_TIMEOUT)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = up
        return True

    def _run(self) -> None:
        try:
            self._pump()
        except OSError:
            _reset(self.client)
            _reset(self.upstream)
        finally:
            self.proxy._forget(self)

    def _pump(self) -> None:
        proxy = self.proxy
        client = self.client
        client.settimeout(SEND_TIMEOUT)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            mode, delay = proxy._state()
            if proxy._closing.is_set() or mode == "drop":
                _reset(client)
                _reset(self.upstream)
                return
            if self.poisoned and mode in ("pass", "latency"):
                _reset(client)
                _reset(self.upstream)
                return
            if self.upstream is None and mode != "blackhole" and not self._connect_upstream():
                _reset(client)
                return
            watched = [client] if self.upstream is None else [client, self.upstream]
            readable, _, _ = select.select(watched, [], [], POLL)
            if not readable:
                continue
            # The mode may have changed while we waited: decide with the current one.
            mode, delay = proxy._state()
            if proxy._closing.is_set() or mode == "drop":
                continue  # handled at the top of the loop
            for sock in readable:
                data = sock.recv(CHUNK)
                if sock is client:
                    if not data:  # the client closed: close upstream politely
                        _close(self.upstream)
                        _close(client)
                        return
                    if mode == "blackhole" or self.upstream is None:
                        self.poisoned = True
                        continue
                    if mode == "latency":
                        time.sleep(delay)
                    self.upstream.sendall(data)
                    proxy._count("bytes_up", len(data))
                else:
                    if not data:  # the server closed: pass the FIN on
                        _close(client)
                        _close(self.upstream)
                        return
                    if mode in ("blackhole", "half_open"):
                        self.poisoned = True
                        continue
                    if mode == "latency":
                        time.sleep(delay)
                    client.sendall(data)
                    proxy._count("bytes_down", len(data))


class FaultProxy:
    """TCP proxy on 127.0.0.1:<free port> to ``target_host:target_port`` with switchable faults."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, int(target_port))
        self._lock = threading.Lock()
        self._mode: Mode = "pass"
        self._delay = 0.0
        self._closing = threading.Event()
        self._connections: set[_Connection] = set()
        self.counters = {"accepted": 0, "reset_on_accept": 0, "bytes_up": 0, "bytes_down": 0}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"fault-proxy-{self.port}-accept", daemon=True
        )
        self._acceptor.start()

    # -- addresses -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    # -- modes -----------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode, latency: float = 0.0) -> None:
        if mode not in ("pass", "latency", "drop", "blackhole", "half_open"):
            raise ValueError(f"unknown proxy mode {mode!r}")
        if latency < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._mode = mode
            self._delay = float(latency)
        # Each connection's own thread applies the mode within POLL seconds: closing a
        # socket here, while that thread selects on it, could hit a reused descriptor.

    def pass_through(self) -> None:
        self.set_mode("pass")

    def latency(self, seconds: float) -> None:
        self.set_mode("latency", seconds)

    def drop(self) -> None:
        self.set_mode("drop")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def half_open(self) -> None:
        self.set_mode("half_open")

    # -- counters -------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        """Connections accepted since start (including those reset at once)."""
        return self.counters["accepted"]

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._connections)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def _state(self) -> tuple[Mode, float]:
        with self._lock:
            return self._mode, self._delay

    # -- threads ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            with self._lock:
                self.counters["accepted"] += 1
                mode = self._mode
                closing = self._closing.is_set()
                conn = None
                if mode != "drop" and not closing:
                    conn = _Connection(self, client)
                    self._connections.add(conn)
            if conn is None:
                self._count("reset_on_accept")
                _reset(client)
                continue
            conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def close(self) -> None:
        """Stop accepting, have every connection reset, join every thread (bounded)."""
        if self._closing.is_set():
            return
        self._closing.set()
        _close(self._listener)
        self._acceptor.join(JOIN_TIMEOUT)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # each thread resets its sockets within POLL seconds
            conn.thread.join(JOIN_TIMEOUT)
        leftover = [c for c in connections if c.thread.is_alive()]
        if self._acceptor.is_alive() or leftover:
            raise RuntimeError(
                f"fault proxy on port {self.port}: {len(leftover)} connection threads and "
                f"acceptor alive={self._acceptor.is_alive()} after {JOIN_TIMEOUT}s"
            )

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"mode={self._mode} accepted={self.accepted}>"
        )
