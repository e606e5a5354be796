"""The shared layer: one Redis string per entry, first writer wins with ``SET NX``.

This is the only module that sees redis-py exceptions; they become
``RemoteUnavailableError`` here (``raise … from``), naming the server without
credentials and the operation that failed, and whether retrying may help.
The policies over this raw layer (fail open, retry and fail closed) live in
:mod:`redis_cache.remote`; what a server offers is read by :mod:`redis_cache.fitness`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
import redis.exceptions

from .. import exceptions
from ..config import Settings
from ..connection import ClientProvider, is_cluster, node_client_for_key
from ..exceptions import RemoteError
from ..lease import RENEWER, EntryKeys, Lease
from ..wire import ReplyTooLargeError, TLSMismatchError
from .base import EntryKey, Layer, Outcome

logger = logging.getLogger("redis_cache.redis")

T = TypeVar("T")

KEY_PREFIX = "redis_cache"
PREFETCH_CHUNK = 1000  # keys per MGET: bounds one reply while keeping round trips few
MAX_BLOCK = 2.0  # longest blocking wait for a lock (capped at half the socket timeout)
FORMAT_VERSION = "v2"  # v2: the interface (space) is part of every key name


def _mget_halving(mget: Any, names: list[str]) -> list[Any]:
    """MGET, halving a chunk whose reply exceeds the reply limit (big values), down to
    the one key that does."""
    try:
        return list(mget(names))
    except ReplyTooLargeError:
        if len(names) == 1:
            raise
        half = len(names) // 2
        return _mget_halving(mget, names[:half]) + _mget_halving(mget, names[half:])


# KEYS[1] = an entry's value key; ARGV[1] = the exact bytes believed corrupt.
# Deletes the entry only if it still holds those bytes, so a repair never destroys
# a good value that a racing writer stored meanwhile.
DISCARD_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Errors worth retrying: the server may come back (restart, failover, loading).
_TRANSIENT = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.RedisClusterException,  # not a RedisError; slot trouble may pass
    OSError,  # socket errors redis-py lets through
)
_REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
_CERTIFICATE = "CERTIFICATE_VERIFY_FAILED"


def _permanent(exc: BaseException) -> str | None:
    """Why retrying ``exc`` cannot help, as a hint of what is likely wrong; else None.

    Hints name settings, never their values: no credential reaches a message.
    """
    for link in _chain(exc):
        if isinstance(link, TLSMismatchError):
            return str(link)
        if isinstance(link, ssl.SSLCertVerificationError) or _CERTIFICATE in str(link):
            return (
                "the server's TLS certificate did not verify: REDIS_CACHE_TLS_CA_FILE must "
                "name the CA that signed it, and the certificate must name the host"
            )
        if isinstance(link, redis.exceptions.NoPermissionError):
            if "client|setname" in str(link).lower():
                return (
                    "the ACL refuses CLIENT SETNAME, which every connection sends to name "
                    "its worker: grant +client|setname"
                )
            return "the ACL user lacks a right; `redis-cache doctor` names each refused command"
        if isinstance(link, redis.exceptions.AuthenticationError):
            return "authentication failed: check the user and password in REDIS_CACHE_URL"
        if isinstance(link, ReplyTooLargeError):
            return (
                "the server sent a reply larger than any operation reads "
                "(REDIS_CACHE_MAX_VALUE_BYTES plus 1 MiB): a misbehaving server, or an "
                "entry written with a larger limit"
            )
    return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def namespace_prefix(namespace: str) -> str:
    """Every key of a namespace starts with this: ACL patterns and ``clear`` rely on it."""
    return f"{KEY_PREFIX}:{FORMAT_VERSION}:{namespace}:"


class RedisLayer(Layer[bytes]):
    """Raw operations on one namespace; every redis-py error is translated here."""

    name = "redis"

    def __init__(
        self, settings: Settings, provider: ClientProvider | None = None, *, ttl: int = 0
    ) -> None:
        self.settings = settings
        self.provider = provider or ClientProvider(settings)
        self.prefix = namespace_prefix(settings.namespace)
        self.ttl = ttl  # seconds each written entry lives (fcache's REDIS_CACHE_TTL); 0: forever
        self._scripts: dict[tuple[int, str], Any] = {}

    # -- key layout ----------------------------------------------------------------

    def value_key(self, key: EntryKey) -> str:
        # The digest is the hash tag: value, lock, fence, signal, staged share one slot.
        callee = key.callee.replace("{", "(").replace("}", ")")
        return f"{self.prefix}{key.space}:{callee}:{{{key.digest}}}"

    def entry_keys(self, key: EntryKey) -> EntryKeys:
        value = self.value_key(key)
        return EntryKeys(
            value=value,
            lock=f"{value}:lock",
            fence=f"{value}:fence",
            signal=f"{value}:signal",
            staged=f"{value}:staged",
        )

    # -- translation ----------------------------------------------------------------

    def translate(self, exc: BaseException, operation: str) -> RemoteError:
        """The one table from redis-py (and socket) errors to ours.

        ``transient`` says whether retrying may help: connection trouble, timeouts,
        loading, failover. Errors that retrying cannot fix (a TLS mismatch, a
        certificate that does not verify, refused credentials or rights, a reply too
        large) are permanent and carry a hint of what is likely wrong.
        """
        hint = _permanent(exc)
        transient = hint is None and isinstance(exc, _TRANSIENT)
        detail = f"{type(exc).__name__}: {exc}"
        return RemoteError(
            f"redis at {self.settings.server_name}: {operation} failed: {detail}"
            + (f" ({hint})" if hint and hint not in detail else ""),
            transient=transient,
        )

    @contextmanager
    def translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except _REDIS_ERRORS as exc:
            raise self.translate(exc, operation) from exc

    def client(self) -> Any:
        try:
            return self.provider.get()
        except _REDIS_ERRORS as exc:
            raise self.translate(exc, "connect") from exc

    # -- Layer contract -------------------------------------------------------------

    def get(self, key: EntryKey) -> bytes | None:
        client = self.client()
        try:  # inline rather than `with translated()`: this is the remote hit path
            value = client.get(self.value_key(key))
        except _REDIS_ERRORS as exc:
            raise self.translate(exc, "GET") from exc
        return None if value is None else bytes(value)

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        self.check_size(key, item)
        name = self.value_key(key)
        wanted = self.settings.min_replicas
        with self.translated("SET NX"):
            if wanted <= 0:
                written = self.client().set(name, item, nx=True, ex=self.ttl or None)
            else:  # WAIT counts only its own connection's writes: one pipeline
                pipe = self.node_client(key).pipeline(transaction=False)
                pipe.set(name, item, nx=True, ex=self.ttl or None)
                pipe.wait(wanted, self.replica_timeout_ms)
                written, acknowledged = pipe.execute()
                if written and int(acknowledged) < wanted:
                    raise self._short(int(acknowledged))
        return Outcome.WRITTEN if written else Outcome.EXISTED

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        client = self.client()
        with self.translated("discard corrupt entry"):
            script = self._script(client, DISCARD_IF_EQUAL)
            return bool(script(keys=[self.value_key(key)], args=[expected]))

    def get_many(self, keys: Sequence[EntryKey]) -> list[bytes | None]:
        """Prefetch many entries in one round trip per 1,000 keys (per slot group on a cluster)."""
        if not keys:
            return []
        client = self.client()
        names = [self.value_key(key) for key in keys]
        values: list[Any] = []
        with self.translated(f"MGET of {len(keys)} keys"):
            # One MGET per chunk: a pipeline of GETs costs redis-py a Python round of
            # work per command and was only ~6x faster than single GETs; MGET ~50x.
            # On a cluster, mget_nonatomic splits the keys by slot.
            mget = client.mget_nonatomic if is_cluster(client) else client.mget
            for start in range(0, len(names), PREFETCH_CHUNK):
                values.extend(_mget_halving(mget, names[start : start + PREFETCH_CHUNK]))
        return [None if v is None else bytes(v) for v in values]

    # -- helpers ----------------------------------------------------------------------

    def check_size(self, key: EntryKey, item: bytes) -> None:
        limit = self.settings.max_value_bytes
        if len(item) > limit:
            raise exceptions.ValueTooLargeError(
                f"entry {key.callee}/{key.digest} is {len(item)} bytes encoded; the remote "
                f"layer stores at most REDIS_CACHE_MAX_VALUE_BYTES={limit}"
            )

    def wait_for_replicas(self, key: EntryKey) -> None:
        """Block until ``REDIS_CACHE_MIN_REPLICAS`` replicas hold all writes to ``key``'s node.

        WAIT counts what replicas acknowledged of *its own connection's* writes, and a
        pooled client may have written the entry on another connection. Replication is
        ordered per node, so a small write followed by WAIT in one pipeline (one
        connection, the slot's node on a cluster) covers the entry, whoever sent it.
        """
        wanted = self.settings.min_replicas
        if wanted <= 0:
            return
        value_key = self.value_key(key)
        timeout_ms = self.replica_timeout_ms
        with self.translated("WAIT"):
            pipe = self.node_client(key).pipeline(transaction=False)
            pipe.set(f"{value_key}:wait", b"1", px=max(1000, 2 * timeout_ms))
            pipe.wait(wanted, timeout_ms)
            acknowledged = int(pipe.execute()[-1])
        if acknowledged < wanted:
            raise self._short(acknowledged)

    @property
    def replica_timeout_ms(self) -> int:
        """How long a WAIT may block: below the socket timeout, so the reply arrives."""
        return int(self.settings.socket_timeout * 1000 * 0.8)

    def _short(self, acknowledged: int) -> RemoteError:
        return RemoteError(
            f"redis at {self.settings.server_name}: only {acknowledged} of "
            f"REDIS_CACHE_MIN_REPLICAS={self.settings.min_replicas} replicas acknowledged a "
            f"write within {self.replica_timeout_ms} ms",
            transient=True,
        )

    def node_client(self, key: EntryKey) -> Any:
        """A plain client for the node holding ``key`` (the client itself unless a cluster)."""
        return node_client_for_key(self.client(), self.value_key(key))

    def _script(self, client: Any, source: str) -> Any:
        cache_key = (id(client), source)
        script = self._scripts.get(cache_key)
        if script is None:
            script = client.register_script(source)
            self._scripts[cache_key] = script
        return script

    def script(self, source: str) -> Any:
        """``source`` registered on this process's client (registering only hashes it)."""
        return self._script(self.client(), source)

    def load_scripts(self, client: Any) -> None:
        """Load every script this layer registered onto ``client``'s server (a new primary)."""
        for _, source in list(self._scripts):
            client.script_load(source)

    def lease(self, key: EntryKey) -> Lease:
        """This call's part in the lock protocol of ``key`` (see :mod:`redis_cache.lease`)."""
        return Lease(
            self.client(),
            self.entry_keys(key),
            self.script,
            RENEWER,
            lease=self.settings.lock_lease,
            max_block=min(MAX_BLOCK, self.settings.socket_timeout / 2),
        )

    def after_fork_in_child(self) -> None:
        self._scripts.clear()

    def close(self) -> None:
        self.provider.close()
        self._scripts.clear()
