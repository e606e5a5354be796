"""Circuit breaker for the fail-open remote layer.

While Redis is down every call would otherwise pay a connect timeout. After a
failure the breaker opens for a cooldown that doubles with each failed probe (up
to a maximum); when it elapses one call probes the server, and success closes it.
The clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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

    @property
    def is_open(self) -> bool:
        return self._failures > 0

    def allow(self) -> bool:
        """Whether a call may go to the server now (at most one probe while open)."""
        if self._failures == 0:
            return True
        with self._lock:
            if self._failures == 0:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

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
