"""Single flight: how a miss is computed and where its result lands.

A flight runs ``compute`` at most once per call and returns the entry every
caller must get (:class:`Landed`); it counts what its writes did (``inserts``,
``insert_conflicts``, ``fencing_rejections``), once per call. Which flight an
interface uses is the policy's choice (:mod:`redis_cache.policy`):

- :class:`NoFlight`: compute, then store where the policy writes (fcache).
- :class:`FileFlight`: a file lock per entry on this machine (local determinism).
- :class:`LeaseFlight`: the Redis lease of :mod:`redis_cache.lease` (global determinism).
- :class:`FailOpenFlight`: the lease while Redis is healthy, else :class:`NoFlight`
  (fcache with ``REDIS_CACHE_SINGLE_FLIGHT=1``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import exceptions, locks
from .breaker import Admission, CircuitBreaker
from .layers.base import EntryKey, Layer, Outcome
from .layers.disk import DiskLayer
from .retry import Retrier
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .layers.redis import RedisLayer
    from .lease import CommitResult, Lease

logger = logging.getLogger("redis_cache")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Computed:
    """A result as stored (after the result encoder) and its envelope.

    ``blob`` is ``None`` for a result too large for any envelope: fcache keeps it in
    this process only, dcache cannot synchronize it.
    """

    value: Any
    blob: bytes | None


@dataclass(frozen=True, slots=True)
class Landed:
    """The entry every caller gets, whose it is, and what this call computed."""

    blob: bytes | None  # None: our result is kept in this process only
    outcome: Outcome  # WRITTEN: ours; EXISTED: another writer's came first
    computed: Computed | None

    @property
    def ours(self) -> bool:
        """The landed entry holds the result this call computed."""
        return self.computed is not None and self.blob is self.computed.blob


Compute = Callable[[], Computed]
Backfill = Callable[[Layer[bytes], EntryKey, bytes], None]


class Flight(ABC):
    @abstractmethod
    def run(self, key: EntryKey, compute: Compute) -> Landed:
        """The entry of ``key``: another caller's if it landed first, else ours."""

    @abstractmethod
    def insert(self, key: EntryKey, computed: Computed) -> Landed:
        """Store a result computed elsewhere (``insert``); first writer wins."""


def _required(key: EntryKey, computed: Computed) -> bytes:
    if computed.blob is None:
        raise exceptions.ValueTooLargeError(
            f"the result of {key.callee} is too large for a cache entry and cannot be "
            "synchronized"
        )
    return computed.blob


def count(stats: StatsRecorder, outcome: Outcome) -> Outcome:
    """Count what a write did; UNAVAILABLE (nothing could take it) is neither."""
    if outcome is Outcome.WRITTEN:
        stats.inserts += 1
    elif outcome is Outcome.EXISTED:
        stats.insert_conflicts += 1
    return outcome


class Writes:
    """Where results are written: the first layer that can take one decides.

    A layer after the deciding one gets a copy off the caller's path, and only when
    the decision was WRITTEN: after EXISTED the winner's entry arrives by backfill.
    """

    def __init__(
        self, layers: tuple[Layer[bytes], ...], backfill: Backfill, stats: StatsRecorder
    ) -> None:
        self.layers = layers
        self._backfill = backfill
        self.stats = stats

    def store(self, key: EntryKey, blob: bytes) -> Outcome:
        for index, layer in enumerate(self.layers):
            outcome = layer.insert(key, blob)
            if outcome is Outcome.UNAVAILABLE:
                continue
            if outcome is Outcome.WRITTEN:
                for later in self.layers[index + 1 :]:
                    self._backfill(later, key, blob)
            return count(self.stats, outcome)
        return Outcome.UNAVAILABLE


class NoFlight(Flight):
    """Compute, then write: concurrent misses may each compute (fcache tolerates it)."""

    def __init__(self, writes: Writes) -> None:
        self.writes = writes

    def run(self, key: EntryKey, compute: Compute) -> Landed:
        return self.insert(key, compute())

    def insert(self, key: EntryKey, computed: Computed) -> Landed:
        if computed.blob is None:
            return Landed(None, Outcome.UNAVAILABLE, computed)
        return Landed(computed.blob, self.writes.store(key, computed.blob), computed)


class FileFlight(Flight):
    """Local determinism: one computation per key on this machine, under a file lock."""

    def __init__(self, disk: DiskLayer, lock_timeout: float, stats: StatsRecorder) -> None:
        self.disk = disk
        self.lock_timeout = lock_timeout
        self.stats = stats

    def run(self, key: EntryKey, compute: Compute) -> Landed:
        with self._locked(key):
            existing = self.disk.get(key)
            if existing is not None:
                return Landed(existing, Outcome.EXISTED, None)
            return self.insert(key, compute())

    def insert(self, key: EntryKey, computed: Computed) -> Landed:
        blob = _required(key, computed)
        if count(self.stats, self.disk.insert(key, blob)) is Outcome.WRITTEN:
            return Landed(blob, Outcome.WRITTEN, computed)
        # Taken meanwhile (an insert does not lock), or a file we cannot read sits there:
        # the entry every other process gets is the one on disk, never our own result.
        existing = self.disk.get(key)
        if existing is None:
            raise exceptions.CorruptEntryError(
                f"disk entry {key.callee}/{key.digest} exists at {self.disk.path(key)} "
                "but cannot be read"
            )
        return Landed(existing, Outcome.EXISTED, computed)

    @contextlib.contextmanager
    def _locked(self, key: EntryKey) -> Iterator[None]:
        path = self.disk.lock_path(key)
        started = time.monotonic()
        try:
            flock = locks.file_lock(path)
        except OSError as exc:  # the lock directory cannot be created
            raise exceptions.DiskLayerError(f"disk layer: cannot lock {path}: {exc}") from exc
        with locks.acquire_file_lock(flock, self.lock_timeout):
            waited = time.monotonic() - started
            self.stats.lock_acquisitions += 1
            if waited > 0.001:
                self.stats.lock_waits += 1
                self.stats.lock_wait_seconds += waited
            yield


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
        self.layer.check_size(key, _required(key, computed))
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
                    blob = _required(key, computed)
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
            self.layer.check_size(key, _required(key, computed))
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


class FailOpenFlight(Flight):
    """fcache's opt-in single flight: the lease while Redis is healthy, else compute here.

    Only the library's own failures fall back (Redis down, waited too long, result
    too large to share); the function's exceptions propagate, and it runs once.
    """

    def __init__(
        self,
        lease: LeaseFlight,
        fallback: NoFlight,
        breaker: CircuitBreaker,
        stats: StatsRecorder,
        note: Callable[[BaseException], None],
    ) -> None:
        self.lease = lease
        self.fallback = fallback
        self.breaker = breaker
        self.stats = stats
        self._note = note

    def run(self, key: EntryKey, compute: Compute) -> Landed:
        once = _Once(compute)

        def failed(exc: BaseException) -> bool:
            return isinstance(exc, exceptions.RemoteUnavailableError) and not once.raised

        try:
            admission, landed, error = self.breaker.call(lambda: self.lease.run(key, once), failed)
        except (exceptions.LockTimeoutError, exceptions.ValueTooLargeError) as exc:
            if once.raised:
                raise
            logger.info("single flight for %s/%s: %s; computing locally", key.callee,
                        key.digest, exc)  # fmt: skip
            admission, landed, error = Admission.ALLOWED, None, None
        if admission is Admission.DENIED:
            self.stats.remote_skipped += 1
        if error is not None:
            self._note(error)
        if landed is not None:
            return landed
        if once.computed is not None:
            return self.fallback.insert(key, once.computed)
        return self.fallback.run(key, compute)

    def insert(self, key: EntryKey, computed: Computed) -> Landed:
        return self.fallback.insert(key, computed)


class _Once:
    """The compute callable, remembering its result and whether it raised."""

    def __init__(self, compute: Compute) -> None:
        self._compute = compute
        self.computed: Computed | None = None
        self.raised = False

    def __call__(self) -> Computed:
        if self.computed is not None:
            return self.computed
        try:
            self.computed = self._compute()
        except BaseException:
            self.raised = True
            raise
        return self.computed
