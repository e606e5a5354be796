"""The shared layer: one Redis string per entry, first writer wins with ``SET NX``.

This is the only module that sees redis-py exceptions; they become
``RemoteUnavailableError`` here (``raise … from``), naming the server without
credentials and the operation that failed. Two policies sit on top of the raw
layer: :class:`FailOpenRemote` (fcache: log once, count, circuit-break, serve
locally) and :class:`SyncRemote` (dcache: retry with jittered backoff within a
deadline, then raise; single-flight through a lease lock).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.exceptions
import tenacity

from .. import exceptions
from ..breaker import CircuitBreaker
from ..config import Settings
from ..connection import ClientProvider
from ..lease import CommitResult, EntryKeys, LeaseLock, LeaseStats
from ..stats import CacheStats
from .base import EntryKey, Layer

logger = logging.getLogger("redis_cache.redis")

T = TypeVar("T")

KEY_PREFIX = "redis_cache"
PREFETCH_CHUNK = 1000  # keys per MGET: bounds one reply while keeping round trips few
FORMAT_VERSION = "v1"

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
)
_PERMANENT = (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)
_TRANSIENT_ALL = (*_TRANSIENT, redis.exceptions.RedisClusterException)
_REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)


class RemoteError(exceptions.RemoteUnavailableError):
    """A Redis operation failed; ``transient`` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def namespace_prefix(namespace: str) -> str:
    """Every key of a namespace starts with this: ACL patterns and ``clear`` rely on it."""
    return f"{KEY_PREFIX}:{FORMAT_VERSION}:{namespace}:"


class RedisLayer(Layer[bytes]):
    """Raw operations on one namespace; every redis-py error is translated here."""

    name = "redis"

    def __init__(self, settings: Settings, provider: ClientProvider | None = None) -> None:
        self.settings = settings
        self.provider = provider or ClientProvider(settings)
        self.prefix = namespace_prefix(settings.namespace)
        self._scripts: dict[int, Any] = {}

    # -- key layout ----------------------------------------------------------------

    def value_key(self, key: EntryKey) -> str:
        # The digest is the hash tag: value, lock, fence and signal share one slot.
        callee = key.callee.replace("{", "(").replace("}", ")")
        return f"{self.prefix}{callee}:{{{key.digest}}}"

    def entry_keys(self, key: EntryKey) -> EntryKeys:
        value = self.value_key(key)
        return EntryKeys(
            value=value, lock=f"{value}:lock", fence=f"{value}:fence", signal=f"{value}:signal"
        )

    # -- translation ----------------------------------------------------------------

    def translate(self, exc: BaseException, operation: str) -> RemoteError:
        """The one table from redis-py (and socket) errors to ours."""
        if isinstance(exc, OSError) and not isinstance(exc, redis.exceptions.RedisError):
            # TLS and socket errors redis-py lets through.
            return RemoteError(
                f"redis at {self.settings.server_name}: {operation} failed: {exc}",
                transient=True,
            )
        # RedisClusterException is not a RedisError; cluster slot trouble may pass.
        transient = isinstance(exc, _TRANSIENT_ALL) and not isinstance(exc, _PERMANENT)
        return RemoteError(
            f"redis at {self.settings.server_name}: {operation} failed: "
            f"{type(exc).__name__}: {exc}",
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

    def insert(self, key: EntryKey, item: bytes, *, ttl: int = 0) -> bool:
        self.check_size(key, item)
        client = self.client()
        with self.translated("SET NX"):
            written = bool(client.set(self.value_key(key), item, nx=True, ex=ttl or None))
        if written:
            self.wait_for_replicas(key)
        return written

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
            mget = client.mget_nonatomic if hasattr(client, "mget_nonatomic") else client.mget
            for start in range(0, len(names), PREFETCH_CHUNK):
                values.extend(mget(names[start : start + PREFETCH_CHUNK]))
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
        client = self.client()
        value_key = self.value_key(key)
        timeout_ms = int(self.settings.socket_timeout * 1000 * 0.8)
        with self.translated("WAIT"):
            if hasattr(client, "get_node_from_key"):
                client = client.get_node_from_key(value_key).redis_connection
            pipe = client.pipeline(transaction=False)
            pipe.set(f"{value_key}:wait", b"1", px=max(1000, 2 * timeout_ms))
            pipe.wait(wanted, timeout_ms)
            acknowledged = int(pipe.execute()[-1])
        if acknowledged < wanted:
            raise RemoteError(
                f"redis at {self.settings.server_name}: only {acknowledged} of "
                f"REDIS_CACHE_MIN_REPLICAS={wanted} replicas acknowledged a write "
                f"within {timeout_ms} ms",
                transient=True,
            )

    def _script(self, client: Any, source: str) -> Any:
        cache_key = id(client) ^ hash(source)
        script = self._scripts.get(cache_key)
        if script is None:
            script = client.register_script(source)
            self._scripts[cache_key] = script
        return script

    def lease(self, key: EntryKey) -> LeaseLock:
        return LeaseLock(
            self.client(), self.entry_keys(key), lease=self.settings.lock_lease, stats=LeaseStats()
        )

    def after_fork_in_child(self) -> None:
        self._scripts.clear()

    def close(self) -> None:
        self.provider.close()
        self._scripts.clear()


@dataclass
class ConsistencyReport:
    """What global determinism needs from the server, as checked."""

    primary: bool = False
    eviction_policy: str = "unknown"
    eviction_safe: bool = False
    replicas: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def strong(self) -> bool:
        return not self.problems


_SAFE_POLICIES = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


def check_consistency(layer: RedisLayer) -> ConsistencyReport:
    """Role, eviction policy and replicas of every primary behind the layer."""
    report = ConsistencyReport()
    client = layer.client()
    with layer.translated("INFO"):
        if hasattr(client, "get_primaries"):
            infos = [client.info(target_nodes=node) for node in client.get_primaries()]
            infos = [next(iter(i.values())) if "role" not in i else i for i in infos]
        else:
            infos = [client.info()]
    report.primary = all(info.get("role") == "master" for info in infos)
    policies = {str(info.get("maxmemory_policy", "unknown")) for info in infos}
    report.eviction_policy = ",".join(sorted(policies))
    report.eviction_safe = all(p in _SAFE_POLICIES for p in policies)
    report.replicas = min(int(info.get("connected_slaves", 0)) for info in infos)
    if not report.primary:
        report.problems.append("the server is a replica, not a primary")
    if not report.eviction_safe:
        report.problems.append(
            f"maxmemory-policy {report.eviction_policy} may evict deterministic entries "
            "(use noeviction or a volatile-* policy)"
        )
    if report.replicas < layer.settings.min_replicas:
        report.problems.append(
            f"{report.replicas} replicas connected, REDIS_CACHE_MIN_REPLICAS="
            f"{layer.settings.min_replicas}"
        )
    return report


class FailOpenRemote(Layer[bytes]):
    """fcache's view: never raises a Redis failure; logs once per outage, counts, breaks."""

    name = "redis"

    def __init__(self, layer: RedisLayer, stats: CacheStats, breaker: CircuitBreaker) -> None:
        self.layer = layer
        self.stats = stats
        self.breaker = breaker

    def _call(self, operation: Callable[[], T]) -> T | None:
        if not self.breaker.allow():
            self.stats.remote_skipped += 1
            return None
        try:
            result = operation()
        except exceptions.RemoteUnavailableError as exc:
            self.stats.remote_errors += 1
            if self.breaker.record_failure():
                logger.warning("%s; serving from local layers until it recovers", exc)
            else:
                logger.debug("%s", exc)
            return None
        if self.breaker.record_success():
            logger.warning("redis at %s is reachable again", self.layer.settings.server_name)
        return result

    def get(self, key: EntryKey) -> bytes | None:
        return self._call(lambda: self.layer.get(key))

    def insert(self, key: EntryKey, item: bytes) -> bool | None:  # type: ignore[override]
        """``None`` when the remote layer could not take the entry (down, or too large)."""
        if len(item) > self.layer.settings.max_value_bytes:
            self.stats.oversize_values += 1
            logger.info(
                "not storing %s/%s remotely: %d bytes exceed REDIS_CACHE_MAX_VALUE_BYTES=%d",
                key.callee,
                key.digest,
                len(item),
                self.layer.settings.max_value_bytes,
            )
            return None
        ttl = self.layer.settings.ttl
        return self._call(lambda: self.layer.insert(key, item, ttl=ttl))

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        if self.layer.settings.read_only:
            return False  # a read-only consumer reports corruption, it does not repair it
        return bool(self._call(lambda: self.layer.discard(key, expected)))

    def get_many(self, keys: Sequence[EntryKey]) -> list[bytes | None]:
        values = self._call(lambda: self.layer.get_many(keys))
        return values if values is not None else [None] * len(keys)

    def single_flight(self, key: EntryKey, compute_blob: Callable[[], bytes]) -> bytes | None:
        """Opt-in fleet-wide single flight; ``None`` if Redis failed (caller computes locally)."""
        if not self.breaker.allow():
            self.stats.remote_skipped += 1
            return None
        sync = SyncRemote(self.layer, self.stats, deadline=0.0, ttl=self.layer.settings.ttl)
        try:
            return sync.single_flight(key, compute_blob)
        except (exceptions.LockTimeoutError, exceptions.ValueTooLargeError) as exc:
            # Waited too long, or the result cannot be shared: fail open to local.
            logger.info("single flight for %s/%s: %s; computing locally", key.callee,
                        key.digest, exc)
            return None
        except exceptions.RemoteUnavailableError as exc:
            self.stats.remote_errors += 1
            if self.breaker.record_failure():
                logger.warning("%s; serving from local layers until it recovers", exc)
            return None


class SyncRemote(Layer[bytes]):
    """dcache's view: Redis is the synchronization layer; fail closed within a deadline."""

    name = "redis"

    def __init__(
        self,
        layer: RedisLayer,
        stats: CacheStats,
        *,
        deadline: float,
        ttl: int = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.layer = layer
        self.stats = stats
        self.deadline = deadline
        self.ttl = ttl
        self._sleep = sleep

    def retrying(self, operation: Callable[[], T], what: str) -> T:
        """Run ``operation``, retrying transient failures with jittered backoff."""
        started = time.monotonic()
        retryer = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.deadline),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, RemoteError) and exc.transient
            ),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retryer(operation)
        except RemoteError as exc:
            self.stats.remote_errors += 1
            attempts = retryer.statistics.get("attempt_number", 1)
            raise RemoteError(
                f"{exc} (gave up on {what} after {attempts} attempts over "
                f"{time.monotonic() - started:.1f}s; REDIS_CACHE_RETRY_DEADLINE={self.deadline:g})",
                transient=exc.transient,
            ) from exc

    def get(self, key: EntryKey) -> bytes | None:
        return self.retrying(lambda: self.layer.get(key), "GET")

    def insert(self, key: EntryKey, item: bytes) -> bool:
        self.layer.check_size(key, item)
        return self.retrying(lambda: self.layer.insert(key, item, ttl=self.ttl), "SET NX")

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        # dcache never repairs: a bad synchronized entry is an error for an operator.
        return False

    def single_flight(self, key: EntryKey, compute_blob: Callable[[], bytes]) -> bytes:
        """Return the entry's first-written envelope, computing it here if no one has.

        The caller's memo and GET missed just now; take the lease, re-check, compute, and write
        value + release + wake-up in one script. Waiters block on the wake-up
        signal, bounded by the lock's remaining lease, so a dead holder's lease
        runs out and one waiter takes over.
        """
        settings = self.layer.settings
        started = time.monotonic()
        keys = self.layer.entry_keys(key)
        first = True
        while True:
            # The caller's lookup has just missed: skip that GET on the first round.
            existing = None if first else self.get(key)
            first = False
            if existing is not None:
                return existing
            lease = self.retrying(functools.partial(self.layer.lease, key), "connect")
            deadline = started + settings.lock_timeout
            try:
                acquired = self.retrying(
                    functools.partial(self._acquire, lease, deadline, keys.value),
                    "lock acquisition",
                )
            except exceptions.DistributedLockTimeoutError as exc:
                raise exceptions.DistributedLockTimeoutError(
                    keys.lock,
                    settings.lock_timeout,
                    detail=f"waited {time.monotonic() - started:.1f}s for the worker computing "
                    f"{key.callee} (REDIS_CACHE_LOCK_TIMEOUT)",
                ) from exc
            if not acquired:
                continue  # the value appeared while we waited
            blob = self._compute_under(lease, key, compute_blob)
            if blob is not None:
                return blob

    def _acquire(self, lease: LeaseLock, deadline: float, value_key: str) -> bool:
        client = self.layer.client()
        with self.layer.translated("lock acquisition"):
            waited_from = time.monotonic()
            timeout = max(0.0, deadline - waited_from)  # a retry must not restart the clock
            acquired = lease.acquire(timeout, until=lambda: bool(client.exists(value_key)))
            waited = time.monotonic() - waited_from
        if acquired:
            self.stats.lock_acquisitions += 1
        if lease.stats is not None:
            self.stats.takeovers += lease.stats.takeovers
            lease.stats.takeovers = 0
        if waited > 0.001:
            self.stats.lock_waits += 1
            self.stats.lock_wait_seconds += waited
        return acquired

    def _compute_under(
        self, lease: LeaseLock, key: EntryKey, compute_blob: Callable[[], bytes]
    ) -> bytes | None:
        """Compute while holding the lease; ``None`` means "go round again"."""
        try:
            existing = self.get(key)
            if existing is not None:
                self._release(lease)
                return existing
            blob = compute_blob()
            self.layer.check_size(key, blob)
        except BaseException:
            self._release(lease)
            raise
        try:
            with self.layer.translated("commit"):
                outcome = lease.commit(blob, ttl_ms=self.ttl * 1000)
        except RemoteError:
            # Whether the commit landed is unknown: the stored value decides below.
            outcome = CommitResult.EXISTED
        if outcome is CommitResult.WRITTEN:
            self.stats.inserts += 1
            self.retrying(functools.partial(self.layer.wait_for_replicas, key), "WAIT")
            return blob
        if outcome is CommitResult.EXISTED:
            self.stats.insert_conflicts += 1
        if outcome is CommitResult.FENCED:
            self.stats.fencing_rejections += 1
            logger.warning(
                "write of %s/%s fenced off: our lease expired and another worker holds it",
                key.callee,
                key.digest,
            )
        return self.get(key)  # the winner's value, or None: go round and wait for it

    def _release(self, lease: LeaseLock) -> None:
        try:
            with self.layer.translated("lock release"):
                lease.release()
        except RemoteError as exc:
            logger.warning("%s; the lease will expire by itself", exc)
