"""Workers' counters summed fleet-wide, for ``redis-cache stats``.

Each :class:`~redis_cache.runtime.Runtime` with a writable remote layer owns a
:class:`StatsPublisher`. It never runs on the caller's path: a daemon thread wakes
every ``REDIS_CACHE_STATS_INTERVAL`` seconds, computes what the process's counters
gained since the last publication, and sends it as one pipelined
``HINCRBY``/``HINCRBYFLOAT`` batch into the namespace's ``!stats`` hash: totals as
``<owner>.<counter>`` (``fcache.misses``), per callee as
``<owner>|<callee>|<counter>`` (``fcache|pkg.compile|memo_hits``). ``close()`` and
process exit publish once more. A failure is logged at DEBUG and retried with
the next batch (the deltas are kept); nothing ever raises into a worker.

Fork: Python 3.12+ warns that forking a process with threads is deprecated, and
a thread forked mid-flush would leave its lock held in the child. So before every
``os.fork()`` each publisher stops its thread (it wakes at once; a flush in
progress may finish, for up to ``PAUSE_TIMEOUT``), and after it the parent
starts a new one. A child inherits the parent's counters and publisher, but not
its thread: ``after_fork_in_child`` starts afresh with the inherited counts as
the baseline, so the parent's counts are published by the parent only; a pid
check makes an un-reset inherited publisher (a fork that bypassed the at-fork
hooks) inert. ``close()`` ends the thread for good.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING

from .stats import StatsRecorder

if TYPE_CHECKING:
    from .layers.redis import RedisLayer

logger = logging.getLogger("redis_cache.publisher")

STATS_KEY_NAME = "!stats"
# How long a close (and process exit) waits for the thread and for the flush lock.
CLOSE_TIMEOUT = 2.0
# How long a fork waits for a publisher thread that is in the middle of a flush.
PAUSE_TIMEOUT = 1.0


def stats_key(prefix: str) -> str:
    """The hash of published counters; ``prefix`` is ``namespace_prefix(namespace)``."""
    return prefix + STATS_KEY_NAME


def deltas(published: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """What ``current`` gained since ``published``; a counter that went down was reset."""
    gained: dict[str, float] = {}
    for name, value in current.items():
        delta = value - published.get(name, 0)
        if delta < 0:  # CacheStats.reset(): everything since then is new
            delta = value
        if delta:
            gained[name] = delta
    return gained


class StatsPublisher:
    """Publishes one interface's counter deltas from a daemon thread; never raises."""

    def __init__(
        self, layer: RedisLayer, stats: StatsRecorder, owner: str, interval: float
    ) -> None:
        self._layer = layer
        self._stats = stats
        self._owner = owner
        self._interval = interval
        self._key = stats_key(layer.prefix)
        self._reset()
        _LIVE.add(self)
        self._start()

    def _reset(self) -> None:
        # Counts present before this publisher existed were published by someone else
        # (a previous backend of the same interface, or the parent before a fork).
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._paused = False
        self._published = self._fields()

    def _start(self) -> None:
        if self._interval <= 0:
            return
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(self), self._stop, self._interval),
            name="redis_cache-stats",
            daemon=True,
        )
        self._thread.start()

    def flush(self, lock_timeout: float = -1) -> bool:
        """Publish what the counters gained since the last success; False if it failed."""
        if os.getpid() != self._pid:
            return False
        if not self._lock.acquire(timeout=lock_timeout):
            return False
        try:
            current = self._fields()
            gained = deltas(self._published, current)
            if gained:
                self._send(gained)
            self._published = current
            return True
        except Exception as exc:  # publishing must never hurt a worker
            logger.debug("publishing %s counters failed: %s", self._owner, exc)
            return False
        finally:
            self._lock.release()

    def _send(self, gained: dict[str, float]) -> None:
        client = self._layer.client()
        with self._layer.translated("publish counters"):
            pipe = client.pipeline(transaction=False)
            for field, delta in gained.items():
                if isinstance(delta, int):
                    pipe.hincrby(self._key, field, delta)
                else:
                    pipe.hincrbyfloat(self._key, field, delta)
            pipe.execute()

    def _fields(self) -> dict[str, float]:
        """Every counter of the interface under its hash field name."""
        snapshot = self._stats.snapshot()
        owner = self._owner
        fields = {f"{owner}.{name}": value for name, value in snapshot.as_dict().items()}
        for callee, counters in snapshot.callees.items():
            for name, value in counters.as_dict().items():
                fields[f"{owner}|{callee}|{name}"] = value
        return fields

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the thread and publish the rest (bounded); a no-op in a forked child."""
        if os.getpid() != self._pid or self._closed:
            return
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._interval > 0:
            self.flush(lock_timeout=timeout)

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child: own lock, own thread, inherited counts as baseline."""
        self._reset()
        self._start()

    def pause_for_fork(self) -> None:
        """End the thread before a fork; ``resume_after_fork`` starts a new one in the parent."""
        thread = self._thread
        if os.getpid() != self._pid or self._closed or thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(PAUSE_TIMEOUT)
        self._thread = None
        self._paused = True

    def resume_after_fork(self) -> None:
        if not self._paused or self._closed:
            return
        self._paused = False
        self._stop = threading.Event()
        self._start()


def _run(ref: weakref.ref[StatsPublisher], stop: threading.Event, interval: float) -> None:
    """The publisher thread; holds only a weak reference, so a dropped backend ends it."""
    while not stop.wait(interval):
        publisher = ref()
        if publisher is None:
            return
        publisher.flush()
        del publisher


_LIVE: weakref.WeakSet[StatsPublisher] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for publisher in list(_LIVE):
        publisher.close()


def _pause_all_before_fork() -> None:
    for publisher in list(_LIVE):
        publisher.pause_for_fork()


def _resume_all_in_parent() -> None:
    for publisher in list(_LIVE):
        publisher.resume_after_fork()


atexit.register(_close_all_at_exit)
os.register_at_fork(before=_pause_all_before_fork, after_in_parent=_resume_all_in_parent)
