"""Retries of transient Redis errors for the fail-closed paths (dcache), within a deadline.

The deadline bounds one outage, not a whole operation: each retried step (a GET,
one lock attempt, one wait, a commit) gets the full ``REDIS_CACHE_RETRY_DEADLINE``
from its own first failure. A waiter that spent 30 s on another machine's
compile still rides out a Sentinel failover that starts then.

An attempt is not started when, lasting as long as the one before it, it would
end past the deadline, no backoff sleeps past it, and while a retried step runs
:func:`time_left` says how long it may still block (``wire._Deadlined``
cuts each connect, handshake and read there): giving up never waits a further
socket timeout past the deadline. Errors that retrying cannot fix
(``RemoteError.transient`` false: authentication, TLS, permissions) fail at once.
One tenacity object per retrier: building one per call cost ~23 µs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .exceptions import RemoteError
from .stats import StatsRecorder

T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError) and exc.transient


_running = threading.local()  # .deadline: when the retried step on this thread must end


def time_left() -> float | None:
    """Seconds before the deadline of the step being retried on this thread, else None."""
    deadline: float | None = getattr(_running, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


class Retrier:
    """Runs an operation, retrying transient ``RemoteError``s with jittered backoff."""

    def __init__(
        self,
        deadline: float,
        *,
        stats: StatsRecorder,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import tenacity  # noqa: PLC0415 - only processes with a fail-closed remote pay for it

        self.deadline = deadline
        self._stats = stats

        def out_of_time(state: tenacity.RetryCallState) -> bool:
            elapsed = state.seconds_since_start or 0.0
            last: float = getattr(state.fn, "last_seconds", 0.0)
            return elapsed + last >= deadline

        backoff = tenacity.wait_random_exponential(multiplier=0.05, max=2.0)

        def wait(state: tenacity.RetryCallState) -> float:
            left = deadline - (state.seconds_since_start or 0.0)
            return max(0.0, min(float(backoff(state)), left))

        self._retrying: Any = tenacity.Retrying(
            stop=out_of_time,
            wait=wait,
            retry=tenacity.retry_if_exception(_transient),
            sleep=sleep,
            reraise=True,
        )

    def __call__(self, operation: Callable[[], T], what: str) -> T:
        started = time.monotonic()
        outer: float | None = getattr(_running, "deadline", None)
        if self.deadline > 0:  # 0: one attempt, with the client's own timeouts
            ours = started + self.deadline
            _running.deadline = ours if outer is None else min(outer, ours)
        try:
            result: T = self._retrying(_Timed(operation))
        except RemoteError as exc:
            self._stats.remote_errors += 1
            attempts = self._retrying.statistics.get("attempt_number", 1)
            raise RemoteError(
                f"{exc} (gave up on {what} after {attempts} attempts over "
                f"{time.monotonic() - started:.1f}s; REDIS_CACHE_RETRY_DEADLINE={self.deadline:g})",
                transient=exc.transient,
            ) from exc
        finally:
            _running.deadline = outer
        return result


class _Timed:
    """The operation, remembering how long its last attempt took (read by the stop rule)."""

    __slots__ = ("last_seconds", "operation")

    def __init__(self, operation: Callable[[], Any]) -> None:
        self.operation = operation
        self.last_seconds = 0.0

    def __call__(self) -> Any:
        started = time.monotonic()
        try:
            return self.operation()
        finally:
            self.last_seconds = time.monotonic() - started
