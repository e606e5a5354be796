"""Failure policies as layers: each wraps a storage layer and keeps its contract.

:class:`FailOpen` is how fcache sees the disk and Redis layers: a failure is a miss
(``get``), ``UNAVAILABLE`` (``insert``) or no repair (``discard``), counted and
logged once per outage; for Redis a circuit breaker stops paying timeouts while the
server is down. :class:`Retrying` is how dcache sees Redis: transient failures are
retried within the deadline, then raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from .. import exceptions, hooks
from ..breaker import Admission, CircuitBreaker
from ..retry import Retrier
from ..stats import StatsRecorder
from .base import EntryKey, Layer, Outcome

logger = logging.getLogger("redis_cache")

T = TypeVar("T")


def is_write_refusal(exc: BaseException) -> bool:
    """A server that refuses writes (full, read-only replica, ACL) still serves reads."""
    import redis.exceptions  # noqa: PLC0415 - only reached after a Redis error

    refused = (
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.NoPermissionError,
    )
    return isinstance(exc, exceptions.RemoteError) and isinstance(exc.__cause__, refused)


class FailOpen(Layer[bytes]):
    """A layer whose failures never reach the caller (fcache)."""

    def __init__(
        self,
        layer: Layer[bytes],
        stats: StatsRecorder,
        *,
        breaker: CircuitBreaker | None = None,
        repairs: bool = True,
        space: str = "fcache",
    ) -> None:
        self.layer = layer
        self.space = space
        self.name = layer.name
        self.stats = stats
        self.breaker = breaker
        self.repairs = repairs
        self._sick = False

    def _failed(self, exc: BaseException) -> bool:
        return isinstance(exc, exceptions.SystemError)

    def note(self, exc: BaseException) -> None:
        """Count a failure; warn on the first of an outage."""
        if hooks.active:
            hooks.emit(hooks.Event("error", self.space, "", self.name, error=exc))
        if isinstance(exc, exceptions.DiskLayerError):
            self.stats.disk_errors += 1
        else:
            self.stats.remote_errors += 1
        if not self._sick:
            self._sick = True
            logger.warning("%s; serving from the other layers until it recovers", exc)
        else:
            logger.debug("%s", exc)

    def _call(self, operation: Callable[[], T], *, proves: bool = True) -> tuple[bool, T | None]:
        """(whether it ran without a failure, its result).

        ``proves``: whether success shows the layer works again. A miss (or a repair that
        found nothing) does not: the disk answers "absent" without touching a broken
        directory, and counting that as a recovery logged two warnings per call for the
        whole outage.
        """
        result: T | None
        if self.breaker is None:
            try:
                result = operation()
            except exceptions.SystemError as exc:
                self.note(exc)
                return False, None
        else:
            admission, result, error = self.breaker.call(operation, self._failed)
            if admission is Admission.DENIED:
                self.stats.remote_skipped += 1
                return False, None
            if error is not None:
                self.note(error)
                return False, None
        if proves:
            self._recovered()
        return True, result

    def _recovered(self) -> None:
        if self._sick:
            self._sick = False
            logger.warning("%s layer is available again", self.name)

    def get(self, key: EntryKey) -> bytes | None:
        value = self._call(lambda: self.layer.get(key), proves=False)[1]
        if value is not None:
            self._recovered()
        return value

    def get_many(self, keys: Sequence[EntryKey]) -> list[bytes | None]:
        ok, values = self._call(lambda: self.layer.get_many(keys), proves=False)
        if not ok or values is None:
            return [None] * len(keys)
        if any(v is not None for v in values):
            self._recovered()
        return values

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        try:
            ok, outcome = self._call(lambda: self._insert(key, item))
        except exceptions.ValueTooLargeError as exc:
            self.stats.oversize_values += 1
            logger.info("not stored in the %s layer: %s", self.name, exc)
            return Outcome.UNAVAILABLE
        return outcome if ok and outcome is not None else Outcome.UNAVAILABLE

    def _insert(self, key: EntryKey, item: bytes) -> Outcome:
        try:
            return self.layer.insert(key, item)
        except exceptions.RemoteError as exc:
            if not is_write_refusal(exc):
                raise
            # Full (noeviction), a replica, or a read-only ACL: reads still work, so the
            # breaker stays closed; the entry stays in the local layers.
            self.stats.remote_refusals += 1
            logger.log(
                logging.WARNING if self.stats.remote_refusals == 1 else logging.DEBUG,
                "%s; keeping new entries local",
                exc,
            )
            return Outcome.UNAVAILABLE

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        if not self.repairs:
            return False  # a read-only consumer reports corruption, it does not repair it
        removed = bool(self._call(lambda: self.layer.discard(key, expected), proves=False)[1])
        if removed:
            self._recovered()
        return removed


class Retrying(Layer[bytes]):
    """A layer whose transient failures are retried within a deadline, then raised (dcache)."""

    def __init__(self, layer: Layer[bytes], retrier: Retrier) -> None:
        self.layer = layer
        self.name = layer.name
        self.retrier = retrier

    def get(self, key: EntryKey) -> bytes | None:
        return self.retrier(lambda: self.layer.get(key), "GET")

    def get_many(self, keys: Sequence[EntryKey]) -> list[bytes | None]:
        return self.retrier(lambda: self.layer.get_many(keys), "MGET")

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        attempts = 0

        def attempt() -> Outcome:
            nonlocal attempts
            attempts += 1
            outcome = self.layer.insert(key, item)
            if outcome is Outcome.EXISTED and attempts > 1 and self.layer.get(key) == item:
                return Outcome.WRITTEN  # our earlier attempt landed; its reply was lost
            return outcome

        return self.retrier(attempt, "SET NX")

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        return self.retrier(lambda: self.layer.discard(key, expected), "discard")
