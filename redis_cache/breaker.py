"""Circuit breaker for the fail-open remote layer.

While Redis is down every call would otherwise pay a connect timeout. After a
failure the breaker opens for a cooldown that doubles with each failed probe (up
to a maximum); when it elapses one call probes the server, and success closes it.

Every probe ends in a verdict: use :meth:`CircuitBreaker.call`, which records a
success, a failure, or, when anything else escapes (a compile timeout's SIGALRM,
KeyboardInterrupt), an abandoned probe that counts as failed. A probe left
pending would keep the breaker open for the life of the process. The clock is
injectable so tests need not sleep.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from . import forksafe

T = TypeVar("T")


class Admission(enum.Enum):
    DENIED = "denied"  # open: skip the server
    ALLOWED = "allowed"  # closed: go ahead
    PROBE = "probe"  # open, cooldown over: this call decides


class CircuitBreaker:
    def __init__(
        self,
        cooldown: float,
        max_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial = cooldown
        self._max = max(cooldown, max_cooldown)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        forksafe.register(self)

    @property
    def is_open(self) -> bool:
        return self._failures > 0

    def admit(self) -> Admission:
        """Whether a call may go to the server now (at most one probe while open)."""
        if self._failures == 0:
            return Admission.ALLOWED
        with self._lock:
            if self._failures == 0:
                return Admission.ALLOWED
            if self._probing or self._clock() < self._open_until:
                return Admission.DENIED
            self._probing = True
            return Admission.PROBE

    def call(
        self, operation: Callable[[], T], failed: Callable[[BaseException], bool]
    ) -> tuple[Admission, T | None, BaseException | None]:
        """Run ``operation`` if admitted; ``failed(exc)`` says which errors mean "server sick".

        Returns the admission, the result and the error that counted as a failure (the
        caller logs it). Errors ``failed`` rejects propagate; a probe they interrupt is
        recorded as failed first.
        """
        admission = self.admit()
        if admission is Admission.DENIED:
            return admission, None, None
        try:
            result = operation()
        except BaseException as exc:
            if failed(exc):
                self.record_failure()
                return admission, None, exc
            if admission is Admission.PROBE:
                self.record_failure()  # no verdict: try again after the cooldown
            raise
        self.record_success()
        return admission, result, None

    def record_success(self) -> bool:
        """Close the breaker; returns whether it had been open (a recovery to log)."""
        if self._failures == 0:
            return False
        with self._lock:
            was_open = self._failures > 0
            self._failures = 0
            self._probing = False
            return was_open

    def record_failure(self) -> bool:
        """Open (or keep open) the breaker; returns whether this starts an outage."""
        with self._lock:
            starts_outage = self._failures == 0
            self._failures += 1
            cooldown = min(self._max, self._initial * 2 ** min(self._failures - 1, 30))
            self._open_until = self._clock() + cooldown
            self._probing = False
            return starts_outage

    def after_fork_in_child(self) -> None:
        """A probe in flight belongs to a parent thread; the lock may be held by one."""
        self._lock = threading.Lock()
        self._probing = False
