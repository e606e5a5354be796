"""Global determinism's single flight: the Redis lease of an entry (see :mod:`.lease`).

Every Redis step is retried on its own (the deadline bounds an outage, not the
wait for another machine's compile, which ``REDIS_CACHE_LOCK_TIMEOUT`` bounds). One
:class:`~redis_cache.lease.Lease` (one token) serves the whole call, so a step
retried after a lost reply recognizes what its first attempt did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import exceptions
from .flight import Compute, Computed, Flight, Landed, count, required
from .layers.base import EntryKey, Outcome
from .retry import Retrier
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .layers.redis import RedisLayer
    from .lease import CommitResult, Lease

logger = logging.getLogger("redis_cache")

T = TypeVar("T")


class LeaseFlight(Flight):
    """Global determinism: the entry's Redis lease (see :mod:`redis_cache.lease`).

    Every Redis step is retried on its own (the deadline bounds an outage, not the
    wait for another machine's compile, which ``REDIS_CACHE_LOCK_TIMEOUT`` bounds).
    One :class:`Lease` (one token) serves the whole call, so a step retried after a
    lost reply recognizes what its first attempt did.
    """

    def __init__(
        self,
        layer: RedisLayer,
        retry: Retrier,
        stats: StatsRecorder,
        *,
        lock_timeout: float,
        lease: float,
        replicas: int,
        replica_timeout_ms: int,
        ttl_ms: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layer = layer
        self.retry = retry
        self.stats = stats
        self.lock_timeout = lock_timeout
        self.lease = lease
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.ttl_ms = ttl_ms
        self._clock = clock

    def _step(self, what: str, operation: Callable[[], T]) -> T:
        def attempt() -> T:
            with self.layer.translated(what):
                return operation()

        return self.retry(attempt, what)

    def run(self, key: EntryKey, compute: Compute) -> Landed:
        return self._fly(key, compute, None)

    def insert(self, key: EntryKey, computed: Computed) -> Landed:
        self.layer.check_size(key, required(key, computed))
        return self._fly(key, lambda: computed, computed)

    def _fly(self, key: EntryKey, compute: Compute, computed: Computed | None) -> Landed:
        from .lease import Acquired, CommitResult, Present  # noqa: PLC0415

        lease = self._step("connect", lambda: self.layer.lease(key))
        started = self._clock()
        deadline = started + self.lock_timeout
        seen_fence: int | None = None
        counted = False  # a lost write is counted once, at the step that lost it
        try:
            while True:
                attempt = self._step("lock acquisition", lease.attempt)
                if isinstance(attempt, Present):
                    landed = self._landed(attempt.value, computed)
                    if not counted and computed is not None:
                        count(self.stats, landed.outcome)
                    return landed
                if not isinstance(attempt, Acquired):
                    seen_fence = attempt.fence
                    self._wait(lease, key, attempt.pttl, started, deadline)
                    continue
                self._acquired(lease, attempt.fence, attempt.clean, seen_fence)
                blob = attempt.staged
                if blob is None:
                    if computed is None:
                        computed = self._compute_holding(lease, key, compute)
                    blob = required(key, computed)
                result = self._publish(lease, key, blob)
                if result is CommitResult.WRITTEN:
                    landed = self._landed(blob, computed)
                    count(self.stats, landed.outcome)
                    return landed
                if result is CommitResult.FENCED:
                    self.stats.fencing_rejections += 1
                    counted = True
                elif result is CommitResult.EXISTED:
                    self.stats.insert_conflicts += 1
                    counted = True
                # EXISTED, FENCED, LOST: go round; the next attempt reads or waits.
        except BaseException:
            # Gave up holding the lock (a step failed for its whole retry deadline): a
            # renewed lease would keep every other worker out for the life of the process.
            lease.abandon()
            raise
        finally:
            waited = self._clock() - started
            if seen_fence is not None:
                self.stats.lock_waits += 1
                self.stats.lock_wait_seconds += waited

    @staticmethod
    def _landed(blob: bytes, computed: Computed | None) -> Landed:
        if computed is not None and computed.blob == blob:
            return Landed(computed.blob, Outcome.WRITTEN, computed)
        return Landed(blob, Outcome.EXISTED, computed)

    def _wait(
        self, lease: Lease, key: EntryKey, pttl: float, started: float, deadline: float
    ) -> None:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise exceptions.DistributedLockTimeoutError(
                lease.keys.lock,
                self.lock_timeout,
                detail=f"waited {self._clock() - started:.1f}s for the worker computing "
                f"{key.callee} (REDIS_CACHE_LOCK_TIMEOUT)",
            )
        timeout = min(pttl + 0.001, remaining)
        self._step("wait for the lock", lambda: lease.wait(timeout))

    def _acquired(self, lease: Lease, fence: int, clean: bool, seen: int | None) -> None:
        self.stats.lock_acquisitions += 1
        if seen is not None and seen == fence - 1 and not clean:
            self.stats.takeovers += 1
            logger.info(
                "took over %s: fence %d expired without release, now fence %d",
                lease.keys.lock,
                seen,
                fence,
            )

    def _compute_holding(self, lease: Lease, key: EntryKey, compute: Compute) -> Computed:
        try:
            computed = compute()
            self.layer.check_size(key, required(key, computed))
        except BaseException:
            self._release(lease)
            raise
        return computed

    def _release(self, lease: Lease) -> None:
        try:
            with self.layer.translated("lock release"):
                lease.release()
        except exceptions.RemoteError as exc:
            logger.warning("%s; the lease will expire by itself", exc)

    # -- publishing ----------------------------------------------------------------

    def _publish(self, lease: Lease, key: EntryKey, blob: bytes) -> CommitResult:
        if self.replicas <= 0:
            ttl_ms = self.ttl_ms
            return self._step("commit", lambda: lease.commit(blob, ttl_ms=ttl_ms))
        return self._publish_replicated(lease, key, blob)

    def _publish_replicated(self, lease: Lease, key: EntryKey, blob: bytes) -> CommitResult:
        """STAGE + WAIT, then PUBLISH + WAIT, each WAIT on the connection that wrote.

        A publication whose WAIT falls short (or whose reply is lost) has an unknown
        fate: a failover may have dropped it. What is stored now, once the replicas
        acknowledge it, decides; if nothing is, the result is staged again.
        """
        from .lease import CommitResult  # noqa: PLC0415

        while True:
            staged = self._step(
                "stage", lambda: self._replicated(key, lambda p: lease.stage(p, blob),
                                                  lease.staged_result, strict=True)
            )  # fmt: skip
            if staged is not CommitResult.WRITTEN:
                return staged or CommitResult.LOST
            try:
                with self.layer.translated("publish"):
                    published = self._replicated(key, lease.publish, lease.published_result)
            except exceptions.RemoteError as exc:
                if not exc.transient:
                    raise
                published = None  # unknown: read what is there below
            if published is CommitResult.LOST:
                continue
            if published in (CommitResult.FENCED, CommitResult.EXISTED):
                return published
            stored = self._step("read back", lambda: self._durable_get(key))
            if stored is None:
                continue  # a failover lost it: stage again (the lock decides whose)
            return CommitResult.WRITTEN if stored == blob else CommitResult.EXISTED

    def _replicated(
        self,
        key: EntryKey,
        queue: Callable[[Any], None],
        meaning: Callable[[Any], CommitResult],
        *,
        strict: bool = False,
    ) -> CommitResult | None:
        """Run one script and WAIT in one pipeline; ``None`` when WAIT fell short.

        With ``strict`` a short WAIT raises a transient error instead (retried).
        """
        reply, acknowledged = self._pipelined(key, queue)
        result = meaning(reply)
        if acknowledged >= self.replicas:
            return result
        if strict:
            raise self._short(acknowledged)
        return None

    def _durable_get(self, key: EntryKey) -> bytes | None:
        """GET the value and WAIT until replicas hold every write before it."""
        value_key = self.layer.value_key(key)

        def queue(pipe: Any) -> None:
            pipe.get(value_key)
            pipe.set(f"{value_key}:wait", b"1", px=max(1000, 2 * self.replica_timeout_ms))

        client = self.layer.node_client(key)
        pipe = client.pipeline(transaction=False)
        queue(pipe)
        pipe.wait(self.replicas, self.replica_timeout_ms)
        value, _, acknowledged = pipe.execute()
        if int(acknowledged) < self.replicas:
            raise self._short(int(acknowledged))
        return None if value is None else bytes(value)

    def _pipelined(self, key: EntryKey, queue: Callable[[Any], None]) -> tuple[Any, int]:
        import redis.exceptions  # noqa: PLC0415

        client = self.layer.node_client(key)
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            queue(pipe)
            pipe.wait(self.replicas, self.replica_timeout_ms)
            reply, acknowledged = pipe.execute(raise_on_error=False)
            if isinstance(reply, redis.exceptions.NoScriptError):
                self.layer.load_scripts(client)  # a new primary after a failover
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply, int(acknowledged)
        raise redis.exceptions.NoScriptError("scripts could not be loaded")

    def _short(self, acknowledged: int) -> exceptions.RemoteError:
        return exceptions.RemoteError(
            f"redis at {self.layer.settings.server_name}: only {acknowledged} of "
            f"REDIS_CACHE_MIN_REPLICAS={self.replicas} replicas acknowledged a write "
            f"within {self.replica_timeout_ms} ms",
            transient=True,
        )
