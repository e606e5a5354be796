"""Policies over the raw Redis layer: fail open (fcache) or retry and fail closed (dcache).

:class:`FailOpenRemote` logs once, counts, circuit-breaks and serves locally;
:class:`SyncRemote` retries with jittered backoff within a deadline, then raises,
and runs the single flight through a lease lock.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import tenacity

from . import exceptions
from .breaker import CircuitBreaker
from .exceptions import RemoteError
from .layers.base import EntryKey, Layer, Outcome
from .layers.redis import RedisLayer
from .lease import CommitResult, LeaseLock
from .stats import CacheStats

logger = logging.getLogger("redis_cache.redis")

T = TypeVar("T")


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

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        """``UNAVAILABLE`` when the remote layer could not take the entry (down, or too large)."""
        if len(item) > self.layer.settings.max_value_bytes:
            self.stats.oversize_values += 1
            logger.info(
                "not storing %s/%s remotely: %d bytes exceed REDIS_CACHE_MAX_VALUE_BYTES=%d",
                key.callee,
                key.digest,
                len(item),
                self.layer.settings.max_value_bytes,
            )
            return Outcome.UNAVAILABLE
        ttl = self.layer.settings.ttl
        return self._call(lambda: self.layer.insert(key, item, ttl=ttl)) or Outcome.UNAVAILABLE

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

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
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
