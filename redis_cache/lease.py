"""The distributed lease lock of one cache entry, and how its result is published.

When 500 workers miss the same entry, exactly one should compute it and the
others should get the result moments after it lands. Each entry has five keys
(value, lock, fence, signal, staged) that share one Redis Cluster hash tag, so
every Lua script below touches a single slot and runs on the node that owns it.

- The lock is a lease: ``SET lock <token>:<fence> PX lease``, taken only while the
  value is absent. A holder that dies (SIGKILL, partition, OOM) stops renewing and
  the lease runs out. One thread per process renews every lease it holds.
- The fence counter grows by one per acquisition. COMMIT refuses (``FENCED``)
  when the lock is held by somebody else, i.e. our lease ran out and another
  worker took over; the value is only ever written while absent.
- ACQUIRE returns the value when it exists, so a waiter woken by a commit reads
  the result in the same round trip in which it would have tried the lock.
- Waiters block on the signal list; RELEASE and COMMIT leave one token in it.
  ``BRPOPLPUSH signal signal`` rotates the token in place, so one token wakes
  every blocked waiter, and a release between a waiter's attempt and its
  blocking call is not lost (pub/sub would lose it). Every wait is bounded by the
  holder's remaining lease, so a holder that dies costs waiters one lease.
- With replicas to wait for (``REDIS_CACHE_MIN_REPLICAS``) a result is published
  in two steps, each followed by ``WAIT`` on the connection that wrote it: STAGE
  copies it to the staged key, PUBLISH moves it to the value key. Readers only
  ever see published values, so none returns a value that was not on the
  replicas; after a failover that lost the publication the staged copy survives,
  and the next holder publishes it instead of computing another result.

A token is kept for the life of a :class:`Lease`: a retry after a lost reply
finds the lock holding our own token (ACQUIRE renews and reports it taken) or
the value holding our own bytes (COMMIT reports it written). redis-py errors are
not translated here: callers run these steps inside ``RedisLayer.translated``.
"""

from __future__ import annotations

import enum
import heapq
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.crc import key_slot

from . import forksafe
from .lease_scripts import (
    ACQUIRE_LUA,
    COMMIT_LUA,
    EXTEND_LUA,
    PUBLISH_LUA,
    RELEASE_LUA,
    STAGE_LUA,
)
from .retry import time_left

__all__ = [
    "ACQUIRE_LUA",
    "COMMIT_LUA",
    "EXTEND_LUA",
    "PUBLISH_LUA",
    "RELEASE_LUA",
    "STAGE_LUA",
    "Acquired",
    "CommitResult",
    "EntryKeys",
    "Held",
    "Lease",
    "Present",
    "Renewer",
]

log = logging.getLogger("redis_cache.lease")

SIGNAL_TTL_MIN_MS = 5_000
"""A wake-up token lives max(2 * lease, this): long enough for every waiter to see it."""
FENCE_TTL_MIN_MS = 86_400_000
"""The fence counter expires after max(1 day, 10 * lease) without acquisitions.

It only has to outlive any lease still in flight: a reset after a day of silence
cannot let a stale holder write (COMMIT compares the whole token), it only means
fence numbers restart at 1.
"""
_BLOCK_MIN = 0.001  # Redis rounds blocking timeouts to ms, and 0 means "forever"


@dataclass(frozen=True)
class EntryKeys:
    """The five keys of one entry, built by the caller around one hash tag."""

    value: str
    lock: str
    fence: str  # grows by one per acquisition (INCR)
    signal: str  # wake-up list
    staged: str  # a result waiting for replicas before it is published

    def __post_init__(self) -> None:
        """Refuse keys that a Cluster would reject with CROSSSLOT only in production."""
        keys = (self.value, self.lock, self.fence, self.signal, self.staged)
        if len(set(keys)) != len(keys):
            raise ValueError(f"entry keys must be distinct: {keys}")
        if len({key_slot(k.encode()) for k in keys}) != 1:
            raise ValueError(f"entry keys must share one cluster hash tag (slot): {keys}")


class CommitResult(enum.Enum):
    WRITTEN = "written"  # the value holds our bytes
    EXISTED = "existed"  # another value was there first; ours was dropped
    FENCED = "fenced"  # somebody else holds the lock; nothing was written
    LOST = "lost"  # (publish) nothing staged any more: stage again


@dataclass(frozen=True)
class Present:
    """ACQUIRE found the value: nothing was taken."""

    value: bytes


@dataclass(frozen=True)
class Acquired:
    """ACQUIRE took the lock; ``staged`` is an unpublished result to publish instead."""

    fence: int
    clean: bool  # the previous holder released or committed (no lease ran out)
    staged: bytes | None


@dataclass(frozen=True)
class Held:
    """ACQUIRE found the lock held by another worker."""

    pttl: float  # seconds left on the holder's lease (math.inf: no expiry)
    fence: int


Attempt = Present | Acquired | Held
Scripts = Callable[[str], Any]  # Lua source -> a redis-py Script registered on the client


def _fence_of(reply: Any) -> int:
    return int(reply) if reply is not None else 0


class Lease:
    """One worker's part in the lock protocol of one entry.

    Not thread-safe: one per call. The token lives as long as the object, so a retry
    of any step after a lost reply recognizes what the first attempt did. In a child
    forked while it was held, it holds nothing and draws a new token on first use.
    """

    def __init__(
        self,
        client: Any,
        keys: EntryKeys,
        scripts: Scripts,
        renewer: Renewer,
        *,
        lease: float,
        max_block: float,
    ) -> None:
        if not (math.isfinite(lease) and lease > 0):
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        self.client = client
        self.keys = keys
        self._scripts = scripts
        self._renewer = renewer
        self.lease = lease
        self.max_block = max_block
        self.token = secrets.token_hex(16)
        self._pid = os.getpid()
        self._lease_ms = max(1, math.ceil(lease * 1000))
        self._signal_ttl_ms = max(2 * self._lease_ms, SIGNAL_TTL_MIN_MS)
        self._fence_ttl_ms = max(FENCE_TTL_MIN_MS, 10 * self._lease_ms)
        self.hold: Hold | None = None

    def __repr__(self) -> str:
        fence = self.hold.fence if self.hold is not None else None
        return f"Lease({self.keys.lock!r}, fence={fence})"

    def _forget_if_forked(self) -> None:
        """A forked child never holds its parent's lock, nor re-takes it with its token."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self.token = secrets.token_hex(16)
            self.hold = None

    @property
    def owner(self) -> str:
        """What the lock holds while ours ("" before the first acquisition)."""
        self._forget_if_forked()
        return self.hold.owner if self.hold is not None else ""

    @property
    def lost(self) -> bool:
        """Renewal found the lock no longer ours (COMMIT will say FENCED)."""
        self._forget_if_forked()
        return self.hold is not None and self.hold.lost

    def attempt(self) -> Attempt:
        """One ACQUIRE: the value, the lock, or who holds it."""
        self._forget_if_forked()
        reply = self._scripts(ACQUIRE_LUA)(
            keys=[self.keys.value, self.keys.lock, self.keys.fence, self.keys.signal,
                  self.keys.staged],
            args=[self.token, self._lease_ms, self._fence_ttl_ms],
        )  # fmt: skip
        code = int(reply[0])
        if code == 2:
            return Present(bytes(reply[1]))
        if code == 0:
            pttl = int(reply[1])
            return Held(math.inf if pttl < 0 else pttl / 1000.0, _fence_of(reply[2]))
        fence = int(reply[1])
        staged = reply[3] if len(reply) > 3 else None
        if self.hold is None or self.hold.fence != fence:
            self._stop_renewing()
            self.hold = Hold(f"{self.token}:{fence}", fence, self.keys.lock, self._lease_ms)
            self._renewer.add(self.hold, self._scripts(EXTEND_LUA), self.lease)
        return Acquired(fence, int(reply[2]) == 1, None if staged is None else bytes(staged))

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake-up token; whether one came."""
        if not timeout > 0:
            return False
        seconds = min(timeout, self.max_block)
        left = time_left()  # a retried wait: its socket timeout is capped by the deadline
        if left is not None:
            seconds = min(seconds, left / 2)
        seconds = max(round(seconds, 3), _BLOCK_MIN)
        return self.client.brpoplpush(self.keys.signal, self.keys.signal, seconds) is not None

    def commit(self, blob: bytes, *, ttl_ms: int = 0) -> CommitResult:
        """Write the value, release, wake, in one step (safe to retry: see COMMIT_LUA)."""
        reply = self._scripts(COMMIT_LUA)(
            keys=[self.keys.value, self.keys.lock, self.keys.signal, self.keys.staged],
            args=[self.owner, blob, int(ttl_ms), self._signal_ttl_ms],
        )
        return self._finished(reply)

    def stage(self, pipe: Any, blob: bytes) -> None:
        """Queue STAGE on ``pipe`` (the caller adds WAIT on the same connection)."""
        pipe.evalsha(
            self._scripts(STAGE_LUA).sha, 3, self.keys.value, self.keys.lock, self.keys.staged,
            self.owner, blob,
        )  # fmt: skip

    def publish(self, pipe: Any) -> None:
        """Queue PUBLISH on ``pipe`` (the caller adds WAIT on the same connection)."""
        pipe.evalsha(
            self._scripts(PUBLISH_LUA).sha, 4, self.keys.value, self.keys.lock, self.keys.signal,
            self.keys.staged, self.owner, self._signal_ttl_ms,
        )  # fmt: skip

    def staged_result(self, reply: Any) -> CommitResult:
        """What a STAGE reply means (WRITTEN: staged)."""
        code = int(reply[0])
        if code == -1:
            return CommitResult.FENCED
        return CommitResult.WRITTEN if code == 1 else CommitResult.EXISTED

    def published_result(self, reply: Any) -> CommitResult:
        """What a PUBLISH reply means; ends our hold unless it was LOST."""
        if int(reply[0]) == -2:
            return CommitResult.LOST
        return self._finished(reply)

    def _finished(self, reply: Any) -> CommitResult:
        code = int(reply[0])
        if code == -1:
            log.warning(
                "commit of %s fenced: lock now held by fence %d", self.keys.value, int(reply[1])
            )
            self._stop_renewing()
            return CommitResult.FENCED
        self._stop_renewing()
        return CommitResult.WRITTEN if code == 1 else CommitResult.EXISTED

    def release(self) -> bool:
        """Give the lock back and wake the waiters; False if it was not ours (any more)."""
        self._forget_if_forked()
        hold = self.hold
        if hold is None or not hold.active:
            return False
        self._stop_renewing()
        released = self._scripts(RELEASE_LUA)(
            keys=[self.keys.lock, self.keys.signal], args=[hold.owner, self._signal_ttl_ms]
        )
        return int(released) == 1

    def abandon(self) -> None:
        """Stop renewing, without a round trip: the lease runs out by itself (we gave up)."""
        self._forget_if_forked()
        self._stop_renewing()

    def _stop_renewing(self) -> None:
        if self.hold is not None and self.hold.active:
            self._renewer.remove(self.hold)


@dataclass(eq=False)
class Hold:
    """One acquisition, shared by its Lease and the renewer."""

    owner: str  # "<token>:<fence>", exactly what the lock holds
    fence: int
    lock_key: str
    lease_ms: int
    lost: bool = False
    active: bool = True
    pid: int = field(default_factory=os.getpid)


@dataclass(order=True)
class _Due:
    when: float
    seq: int
    hold: Hold = field(compare=False)
    extend: Any = field(compare=False)
    interval: float = field(compare=False)
    last_ok: float = field(compare=False)


class Renewer:
    """One daemon thread per process renews every held lease each third of its lease.

    A thread per lease cost ~0.2 ms to start and join on every deterministic miss. A
    renewal that fails for a whole lease, or finds the lock taken, marks the hold
    ``lost``; the holder's COMMIT is then fenced. Rebuilt empty after fork: a child
    never holds its parent's locks. The clock is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[_Due] = []
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, hold: Hold, extend: Any, lease: float) -> None:
        with self._cond:
            now = self._clock()
            self._seq += 1
            due = _Due(now + lease / 3, self._seq, hold, extend, lease / 3, now)
            heapq.heappush(self._heap, due)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="redis_cache-lease-renew", daemon=True
                )
                self._thread.start()
            if self._heap[0] is due:  # else the thread already wakes up earlier than needed
                self._cond.notify()

    def remove(self, hold: Hold) -> None:
        """Stop renewing ``hold`` (lazily dropped from the heap)."""
        hold.active = False

    def held(self) -> int:
        """How many holds are being renewed (for tests and stats)."""
        with self._cond:
            return sum(1 for due in self._heap if due.hold.active)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and not self._heap[0].hold.active:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0].when <= self._clock():
                        due = heapq.heappop(self._heap)
                        break
                    timeout = self._heap[0].when - self._clock() if self._heap else None
                    self._cond.wait(timeout)
            if self._renew(due):
                with self._cond:
                    due.when = self._clock() + due.interval
                    heapq.heappush(self._heap, due)

    def _renew(self, due: _Due) -> bool:
        """One EXTEND; whether to keep renewing. Never raises."""
        hold = due.hold
        try:
            extended = int(due.extend(keys=[hold.lock_key], args=[hold.owner, hold.lease_ms]))
        except Exception as exc:  # a blip: retry next round unless a whole lease failed
            if not hold.active:
                return False
            if self._clock() - due.last_ok >= due.interval * 3:
                return self._lose(hold, f"renewal failing for longer than the lease: {exc!r}")
            log.debug("renewing %s failed, will retry: %r", hold.lock_key, exc)
            return True
        if extended == 1:
            due.last_ok = self._clock()
            return hold.active
        if hold.active:  # not released or committed meanwhile: somebody took it
            return self._lose(hold, "the lock is no longer ours")
        return False

    @staticmethod
    def _lose(hold: Hold, why: str) -> bool:
        hold.lost = True
        log.warning("lease on %s (fence %d) lost: %s", hold.lock_key, hold.fence, why)
        return False

    def after_fork_in_child(self) -> None:
        self._reset()


RENEWER = Renewer()
forksafe.register(RENEWER)
