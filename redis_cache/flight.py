"""Single flight: how a miss is computed and where its result lands.

A flight runs ``compute`` at most once per call and returns the entry every
caller must get (:class:`Landed`); it counts what its writes did (``inserts``,
``insert_conflicts``, ``fencing_rejections``), once per call. Which flight an
interface uses is the policy's choice (:mod:`redis_cache.policy`):

- :class:`NoFlight`: compute, then store where the policy writes (fcache).
- :class:`FileFlight`: a file lock per entry on this machine (local determinism).
- :class:`~redis_cache.lease_flight.LeaseFlight`: the Redis lease of
  :mod:`redis_cache.lease` (global determinism).
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
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .lease_flight import LeaseFlight

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


def required(key: EntryKey, computed: Computed) -> bytes:
    if computed.blob is None:
        raise exceptions.ValueTooLargeError(
            f"the result of {key.callee} is too large for a cache entry and cannot be synchronized"
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
        blob = required(key, computed)
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
