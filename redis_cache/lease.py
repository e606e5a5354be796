"""The distributed lease lock of one cache entry.

When 500 workers miss the same entry, exactly one should compute it and the
others should get the result moments after it lands. Each entry has four keys
(value, lock, fence, signal) that share one Redis Cluster hash tag, so every
Lua script below touches a single slot and runs on the node that owns it.

- The lock is a lease: ``SET lock <token>:<fence> NX PX lease``. A holder that
  dies (SIGKILL, partition, OOM) simply stops renewing and the lease runs out.
- The fence counter grows by one per successful acquisition. The holder writes
  its result with COMMIT, which refuses (``FENCED``) when the lock is held by
  somebody else, i.e. when our lease ran out and another worker took over; and
  the value itself is written with ``SET NX``, so a result is never overwritten.
- Waiters block on the signal list; RELEASE and COMMIT leave one token in it.

Wake-up protocol, and why not pub/sub: release/commit do ``DEL signal; RPUSH
signal 1; PEXPIRE signal ttl``; ACQUIRE deletes the signal when it takes the
lock. A waiter blocks with ``BRPOPLPUSH signal signal timeout``, which rotates
the token atomically (pops it and pushes it back in one command), so the token
stays in the list for every other waiter: the server wakes *all* blocked
waiters in one pass, with no client round trip per hop and no instant at which
the list is empty because a waiter popped the token and has not re-pushed it
yet. Compared with pub/sub: the list lives in the entry's slot (pub/sub
messages are broadcast cluster-wide and are not tied to a slot), a waiter needs
no extra connection in subscribe mode, and a token persists until expiry or the
next acquisition, so a release that happens between a waiter's failed attempt
and its blocking call is not lost (a published message would be). Every
blocking call is bounded by the lock's remaining PTTL, so a holder that dies
without releasing costs waiters at most one lease, never a lost wake-up. A
release wakes every waiter and one of them wins; for the common case (the
holder commits) ``acquire(until=value exists)`` sends them all to read instead.

Fork: a LeaseLock records the pid at acquisition. In a forked child the parent's
lock is simply not held (``fence`` is ``None``, ``release()`` is a no-op and
``commit()`` returns ``FENCED`` without touching Redis); the renewal thread does
not exist in the child, as threads do not survive ``fork``.

redis-py errors are not translated here: the Redis layer above does it.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import redis
import redis.cluster
from redis.commands.core import Script
from redis.crc import key_slot

from .exceptions import DistributedLockTimeoutError

__all__ = [
    "ACQUIRE_LUA",
    "COMMIT_LUA",
    "EXTEND_LUA",
    "RELEASE_LUA",
    "CommitResult",
    "EntryKeys",
    "LeaseLock",
    "LeaseStats",
]

log = logging.getLogger("redis_cache.lease")

Client: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"

RENEW_THREAD_NAME = "redis_cache-lease-renew"
SIGNAL_TTL_MIN_MS = 5_000
"""A wake-up token lives max(2 * lease, this): long enough for every waiter to see it."""
FENCE_TTL_MIN_MS = 86_400_000
"""The fence counter expires after max(1 day, 10 * lease) without acquisitions.

Without a TTL every entry ever locked would leave a counter behind forever. The
counter only has to outlive any lease that could still be in flight; a reset
after a day of silence cannot let a stale holder write (COMMIT compares the
whole token), it only means fence numbers restart at 1.
"""

_BLOCK_MIN = 0.001  # Redis rounds blocking timeouts to ms, and 0 ms means "forever"
_PTTL_MARGIN = 0.001  # wake just after the lease ran out, not just before
_ANOMALY_BACKOFF = 0.05
_JOIN_TIMEOUT = 1.0

ACQUIRE_LUA = """
-- ACQUIRE: take the lease if nobody holds it.
-- KEYS[1] lock      KEYS[2] fence counter      KEYS[3] signal list
-- ARGV[1] token     ARGV[2] lease (ms)         ARGV[3] fence counter TTL (ms)
-- Taken:  {1, fence, clean}. fence = INCR of KEYS[2], done only here, so it grows exactly
--         once per successful acquisition; the lock holds "<token>:<fence>". clean = 1 when
--         a wake-up token was waiting (the previous holder released or committed); the
--         token is deleted because waiters must block again while the lock is held.
-- Held:   {0, pttl_ms, holder_fence} (pttl -1: the lock has no expiry, set by hand).
-- A lock already holding ARGV[1] is ours: an earlier attempt took it and its reply was
-- lost. It is renewed and reported taken, so a retry does not wait out our own lease.
local holder = redis.call('GET', KEYS[1])
if holder then
  local holder_fence = tonumber(string.match(holder, ':(%d+)$')) or 0
  if string.sub(holder, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, holder_fence, 0}
  end
  return {0, redis.call('PTTL', KEYS[1]), holder_fence}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
local clean = redis.call('DEL', KEYS[3])
return {1, fence, clean}
"""

EXTEND_LUA = """
-- EXTEND: renew our lease.
-- KEYS[1] lock
-- ARGV[1] owner ("<token>:<fence>", exactly what ACQUIRE stored)   ARGV[2] lease (ms)
-- Returns 1 if the lock is still ours (its TTL is reset to the lease), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LUA = """
-- RELEASE: give the lease back and wake the waiters.
-- KEYS[1] lock      KEYS[2] signal list
-- ARGV[1] owner ("<token>:<fence>")      ARGV[2] signal TTL (ms)
-- Returns 1 if released, 0 if the lock was not ours (nothing is touched then).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

COMMIT_LUA = """
-- COMMIT: one atomic write of the value, the release and the wake-up.
-- KEYS[1] value     KEYS[2] lock       KEYS[3] signal list
-- ARGV[1] owner ("<token>:<fence>", or "" when never acquired)    ARGV[2] encoded value
-- ARGV[3] value TTL (ms, 0 = none)                                  ARGV[4] signal TTL (ms)
-- {-1, holder_fence}: fenced, somebody else holds the lock now; nothing is touched.
-- {1, 0}: value written; {0, 0}: a value already existed (SET NX never overwrites).
-- In both of the latter cases our lock (if still ours) is deleted and waiters are woken.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {-1, tonumber(string.match(holder, ':(%d+)$')) or 0}
end
local written
if tonumber(ARGV[3]) > 0 then
  written = redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3])
else
  written = redis.call('SET', KEYS[1], ARGV[2], 'NX')
end
if holder then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], ARGV[4])
if written then
  return {1, 0}
end
return {0, 0}
"""


@dataclass(frozen=True)
class EntryKeys:
    """The four keys of one entry, built by the caller around one hash tag."""

    value: str  # e.g. "redis_cache:v2:ns:{digest}:val"
    lock: str
    fence: str  # monotonically increasing counter per entry (INCR)
    signal: str  # list used to wake waiters

    def __post_init__(self) -> None:
        """Refuse keys that a Cluster would reject with CROSSSLOT only in production."""
        keys = (self.value, self.lock, self.fence, self.signal)
        if len(set(keys)) != len(keys):
            raise ValueError(f"entry keys must be distinct: {keys}")
        slots = {key_slot(k.encode()) for k in keys}
        if len(slots) != 1:
            raise ValueError(f"entry keys must share one cluster hash tag (slot): {keys}")


class CommitResult(enum.Enum):
    """What COMMIT did."""

    WRITTEN = "written"  # our value is stored
    EXISTED = "existed"  # a value was already there; ours was dropped
    FENCED = "fenced"  # somebody else holds the lock now; nothing was written


Counter: TypeAlias = Literal[
    "acquisitions", "waits", "wait_seconds", "takeovers", "fencing_rejections", "renew_failures"
]


@dataclass
class LeaseStats:
    """Counters a caller may share between many locks (updates are serialized by a lock).

    - ``acquisitions``: successful acquisitions (``try_acquire`` or ``acquire``).
    - ``waits``: ``acquire`` calls that found the lock held at least once (contended calls).
    - ``wait_seconds``: total time spent in those contended ``acquire`` calls.
    - ``takeovers``: acquisitions of fence N by an ``acquire`` call whose last sight of the
      lock was held by fence N-1 (our direct predecessor), when ACQUIRE found no wake-up
      token: N-1 neither released nor committed, its lease ran out (crash, SIGSTOP,
      partition, renewal that could not keep up). Counted by the waiter that saw it, so a
      worker arriving after the expiry and acquiring at once does not count it. A false
      positive needs the lock to stay free longer than the token TTL (max(2 * lease, 5 s))
      while a waiter whose waits are bounded by ``max_block`` does not retry.
    - ``fencing_rejections``: COMMITs refused because somebody else held the lock.
    - ``renew_failures``: EXTEND calls that returned 0 or raised while the lock was held.
    """

    acquisitions: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    takeovers: int = 0
    fencing_rejections: int = 0
    renew_failures: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def add(self, counter: Counter, amount: float = 1) -> None:
        """Increment one counter; safe from the renewal thread and the caller at once."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + amount)


class _Scripts:
    """The four scripts registered on one client.

    Cached by ``id(client)`` in a WeakValueDictionary: the entry lives as long as any
    LeaseLock uses it, and because it references the client, the id cannot be reused by
    another client meanwhile. (A WeakKeyDictionary would never drop its entries: each
    Script holds its client strongly.) Registering is local: it only hashes the source.
    """

    __slots__ = ("__weakref__", "acquire", "client", "commit", "extend", "release")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.acquire: Script = client.register_script(ACQUIRE_LUA)
        self.extend: Script = client.register_script(EXTEND_LUA)
        self.release: Script = client.register_script(RELEASE_LUA)
        self.commit: Script = client.register_script(COMMIT_LUA)


_scripts_cache: weakref.WeakValueDictionary[int, _Scripts] = weakref.WeakValueDictionary()
_scripts_lock = threading.Lock()


def _scripts_for(client: Client) -> _Scripts:
    with _scripts_lock:
        scripts = _scripts_cache.get(id(client))
        if scripts is None or scripts.client is not client:
            scripts = _Scripts(client)
            _scripts_cache[id(client)] = scripts
        return scripts


def _socket_timeout(client: Client) -> float | None:
    """The client's socket timeout, if it can be read (blocking calls must stay below it)."""
    try:
        kwargs: Any = client.get_connection_kwargs()
        value = kwargs.get("socket_timeout")
    except Exception:  # foreign client types: best effort only
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _fence_of(owner: str) -> int:
    return int(owner.rpartition(":")[2])


@dataclass(eq=False)
class _Hold:
    """One acquisition: what the renewal thread and release/commit share."""

    owner: str  # "<token>:<fence>", the exact lock value
    fence: int
    pid: int
    stop: threading.Event = field(default_factory=threading.Event)
    finishing: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    active: bool = True
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class _Attempt:
    acquired: bool
    fence: int  # ours when acquired, else the holder's (0 if unknown)
    pttl: float  # seconds left on the holder's lease (math.inf: no expiry); 0 when acquired
    clean: bool  # acquired after a release/commit (a wake-up token was waiting)


class LeaseLock:
    """A fenced lease on one entry; one object per worker and acquisition attempt.

    The object is not itself thread-safe (use one per thread); its renewal thread is
    internal. After ``acquire`` returns True, check the value again before computing: it
    may have landed just before we took the lock.
    """

    def __init__(
        self,
        client: Client,
        keys: EntryKeys,
        *,
        lease: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        renew: bool = True,
        max_block: float = 2.0,
        stats: LeaseStats | None = None,
    ) -> None:
        if not (math.isfinite(lease) and lease > 0):
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        if not (math.isfinite(max_block) and max_block > 0):
            raise ValueError(f"max_block must be a positive number of seconds, not {max_block!r}")
        socket_timeout = _socket_timeout(client)
        if socket_timeout is not None and max_block > socket_timeout / 2:
            # A blocking call longer than the socket timeout would fail client-side.
            log.debug("max_block %.3fs capped at half the socket timeout", max_block)
            max_block = socket_timeout / 2
        self.client = client
        self.keys = keys
        self.lease = float(lease)
        self.renew = renew
        self.max_block = float(max_block)
        self.stats = stats
        self.token: str = secrets.token_hex(16)
        self._next_token: str = secrets.token_hex(16)
        self._token_pid = os.getpid()
        self._clock = clock
        self._sleep = sleep
        self._scripts = _scripts_for(client)
        self._lease_ms = max(1, math.ceil(lease * 1000))
        self._signal_ttl_ms = max(2 * self._lease_ms, SIGNAL_TTL_MIN_MS)
        self._fence_ttl_ms = max(FENCE_TTL_MIN_MS, 10 * self._lease_ms)
        self._hold: _Hold | None = None

    def __repr__(self) -> str:
        return f"LeaseLock({self.keys.lock!r}, fence={self.fence})"

    # -- state -------------------------------------------------------------------------

    def _current(self) -> _Hold | None:
        """The hold of this process, if any (a forked child never holds its parent's lock)."""
        hold = self._hold
        if hold is not None and hold.active and hold.pid == os.getpid():
            return hold
        return None

    @property
    def fence(self) -> int | None:
        """Our fence number from acquisition until release/commit, else None.

        It stays set when renewal finds the lease lost (see ``lost``): COMMIT decides then.
        """
        hold = self._current()
        return hold.fence if hold is not None else None

    @property
    def lost(self) -> bool:
        """Renewal noticed the lock is no longer ours (kept after release until re-acquired)."""
        hold = self._hold
        return hold is not None and hold.pid == os.getpid() and hold.lost

    def _count(self, counter: Counter, amount: float = 1) -> None:
        if self.stats is not None:
            self.stats.add(counter, amount)

    # -- acquiring ---------------------------------------------------------------------

    def _attempt(self) -> _Attempt:
        hold = self._current()
        if hold is not None:
            if not hold.lost:
                raise RuntimeError(f"{self!r} is already held; release or commit first")
            self._finish(hold)
        # One token per acquisition, kept across attempts until one succeeds: a retry
        # after a lost reply then finds the lock holding it and knows it is ours.
        if self._token_pid != os.getpid():  # a forked child must never share our token
            self._next_token, self._token_pid = secrets.token_hex(16), os.getpid()
        token = self._next_token
        reply = self._scripts.acquire(
            keys=[self.keys.lock, self.keys.fence, self.keys.signal],
            args=[token, self._lease_ms, self._fence_ttl_ms],
        )
        code, first, second = (int(x) for x in reply)
        if code != 1:
            pttl = math.inf if first < 0 else first / 1000.0
            return _Attempt(acquired=False, fence=second, pttl=pttl, clean=False)
        self.token = token
        self._next_token = secrets.token_hex(16)
        hold = _Hold(owner=f"{token}:{first}", fence=first, pid=os.getpid())
        self._hold = hold
        self._count("acquisitions")
        log.debug("acquired %s with fence %d", self.keys.lock, first)
        if self.renew:
            hold.thread = threading.Thread(
                target=_renew_loop,
                args=(weakref.ref(self), hold, self._scripts.extend, self.keys.lock),
                kwargs={
                    "lease": self.lease,
                    "lease_ms": self._lease_ms,
                    "clock": self._clock,
                    "stats": self.stats,
                },
                name=RENEW_THREAD_NAME,
                daemon=True,
            )
            hold.thread.start()
        return _Attempt(acquired=True, fence=first, pttl=0.0, clean=second == 1)

    def try_acquire(self) -> Literal[True] | float:
        """One attempt: True when acquired, else the holder's remaining lease in seconds.

        Test the result with ``is True``: a float is truthy too. ``math.inf`` means the
        lock has no expiry (somebody set it by hand).
        """
        attempt = self._attempt()
        return True if attempt.acquired else attempt.pttl

    def acquire(self, timeout: float, *, until: Callable[[], bool] | None = None) -> bool:
        """Block until acquired (True) or ``until()`` holds after a wait (False).

        ``until`` is called after every wait and before the next attempt (e.g. "the value
        exists"), so that a commit wakes waiters into reading instead of queueing for the
        lock. Each wait is bounded by the holder's remaining lease, the time left and
        ``max_block``. Raises DistributedLockTimeoutError after ``timeout`` seconds.
        """
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0, not {timeout!r}")
        start = self._clock()
        deadline = start + timeout
        attempt = self._attempt()
        if attempt.acquired:
            return True
        self._count("waits")
        try:
            while True:
                now = self._clock()
                remaining = deadline - now
                if remaining <= 0:
                    raise DistributedLockTimeoutError(
                        self.keys.lock, timeout, detail=f"waited {now - start:.1f}s"
                    )
                seen = attempt.fence
                signaled = self.wait_for_signal(
                    min(attempt.pttl + _PTTL_MARGIN, remaining, self.max_block)
                )
                if until is not None and until():
                    log.debug("stopped waiting for %s: condition met", self.keys.lock)
                    return False
                attempt = self._attempt()
                if attempt.acquired:
                    if seen == attempt.fence - 1 and not attempt.clean:
                        self._count("takeovers")
                        log.info(
                            "took over %s: fence %d expired without release, now fence %d",
                            self.keys.lock,
                            seen,
                            attempt.fence,
                        )
                    return True
                if signaled and attempt.fence == seen:
                    # A wake-up token while the same holder still holds: not produced by this
                    # protocol (ACQUIRE deletes the token). Back off instead of spinning.
                    self._sleep(max(0.0, min(_ANOMALY_BACKOFF, deadline - self._clock())))
        finally:
            self._count("wait_seconds", self._clock() - start)

    def wait_for_signal(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake-up token; whether one was seen.

        The token is rotated in place (BRPOPLPUSH on the same list), which leaves it for
        every other waiter. ``timeout <= 0`` returns False at once (0 would block forever).
        """
        if not timeout > 0:
            return False
        seconds = max(round(min(timeout, self.max_block), 3), _BLOCK_MIN)
        return self.client.brpoplpush(self.keys.signal, self.keys.signal, seconds) is not None

    # -- finishing ---------------------------------------------------------------------

    def _finish(self, hold: _Hold) -> None:
        """Mark the hold over and stop its renewal promptly (the thread waits on an Event)."""
        hold.active = False
        hold.stop.set()
        thread = hold.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)

    def release(self) -> bool:
        """Give the lock back and wake waiters; False if it was not ours (any more)."""
        hold = self._hold
        if hold is None or not hold.active:
            return False
        if hold.pid != os.getpid():
            log.debug("not releasing %s: held by parent process %d", self.keys.lock, hold.pid)
            return False
        hold.finishing.set()
        try:
            released = int(
                self._scripts.release(
                    keys=[self.keys.lock, self.keys.signal],
                    args=[hold.owner, self._signal_ttl_ms],
                )
            )
        finally:
            self._finish(hold)
        log.debug("released %s (fence %d): %s", self.keys.lock, hold.fence, bool(released))
        return released == 1

    def commit(self, blob: bytes, *, ttl_ms: int = 0) -> CommitResult:
        """Write the value, release the lock and wake waiters, in one atomic step.

        Fenced (nothing written) if somebody else holds the lock. Without a hold, this is a
        plain write-if-absent that still refuses while another worker holds the lock. A
        retry after a connection error is safe: the value is only ever set if absent.
        """
        if ttl_ms < 0:
            raise ValueError(f"ttl_ms must be >= 0, not {ttl_ms!r}")
        hold = self._hold
        if hold is not None and hold.pid != os.getpid():
            log.warning(
                "commit of %s refused: the lock belongs to parent process %d",
                self.keys.value,
                hold.pid,
            )
            return CommitResult.FENCED
        if hold is not None and hold.active:
            hold.finishing.set()
        try:
            reply = self._scripts.commit(
                keys=[self.keys.value, self.keys.lock, self.keys.signal],
                args=[
                    hold.owner if hold is not None else "",
                    blob,
                    int(ttl_ms),
                    self._signal_ttl_ms,
                ],
            )
        finally:
            if hold is not None and hold.active:
                self._finish(hold)
        code, holder_fence = (int(x) for x in reply)
        if code == -1:
            self._count("fencing_rejections")
            log.warning(
                "commit of %s fenced: our fence %s, lock now held by fence %d",
                self.keys.value,
                hold.fence if hold is not None else None,
                holder_fence,
            )
            return CommitResult.FENCED
        result = CommitResult.WRITTEN if code == 1 else CommitResult.EXISTED
        log.debug("committed %s: %s", self.keys.value, result.value)
        return result

    @contextlib.contextmanager
    def held(self, timeout: float, *, until: Callable[[], bool] | None = None) -> Iterator[bool]:
        """``acquire`` for a block; releases on exit if still held (not committed).

        Yields what ``acquire`` returned. When the block raises, a failing release is
        logged and swallowed so the original error propagates (the lease runs out).
        """
        acquired = self.acquire(timeout, until=until)
        try:
            yield acquired
        except BaseException:
            if acquired:
                try:
                    self.release()
                except Exception:
                    log.debug("release of %s failed while unwinding", self.keys.lock, exc_info=True)
            raise
        if acquired:
            self.release()


def _renew_loop(
    owner: weakref.ref[LeaseLock],
    hold: _Hold,
    extend: Script,
    lock_key: str,
    *,
    lease: float,
    lease_ms: int,
    clock: Callable[[], float],
    stats: LeaseStats | None,
) -> None:
    """EXTEND every lease/3 until stopped; set ``lost`` on a 0 or after a lease of errors.

    Holds the LeaseLock only weakly: a lock dropped without release stops being renewed
    and its lease runs out. Never raises: everything is logged.
    """

    def failed() -> None:
        if stats is not None:
            stats.add("renew_failures")

    def lose(why: str) -> None:
        hold.lost = True
        log.warning("lease on %s (fence %d) lost: %s", lock_key, hold.fence, why)

    interval = lease / 3
    last_ok = clock()
    try:
        while not hold.stop.wait(interval):
            if owner() is None:
                log.debug("%s dropped without release; letting its lease run out", lock_key)
                return
            try:
                extended = int(extend(keys=[lock_key], args=[hold.owner, lease_ms])) == 1
            except Exception as exc:
                if hold.stop.is_set() or hold.finishing.is_set():
                    return
                failed()
                if clock() - last_ok >= lease:
                    lose(f"renewal failing for longer than the lease: {exc!r}")
                    return
                log.debug("renewing %s failed, will retry: %r", lock_key, exc)
                continue
            if extended:
                last_ok = clock()
                continue
            if hold.stop.is_set() or hold.finishing.is_set():
                return  # released or committed meanwhile
            failed()
            lose("the lock is no longer ours")
            return
    except Exception:
        hold.lost = True
        log.warning("lease renewal of %s stopped unexpectedly", lock_key, exc_info=True)
