"""One interface's layers in one process, built from settings on first use."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import exceptions, locks
from .breaker import CircuitBreaker
from .codec import Codec
from .config import Settings
from .layers import DiskLayer, EntryKey, Layer, MemoEntry, MemoLayer, Outcome

if TYPE_CHECKING:
    from .layers.redis import RedisLayer
    from .publisher import StatsPublisher
    from .remote import FailOpenRemote, SyncRemote

logger = logging.getLogger("redis_cache")

# How long process exit waits for queued disk backfills.
BACKFILL_FLUSH_SECONDS = 5.0


class Backend:
    """Settings, codec and layers of one interface, plus the policies that tie them."""

    def __init__(self, settings: Settings, stats: Any, owner: str) -> None:
        self.settings = settings
        self.stats = stats
        self.owner = owner
        self.codec = Codec(settings.secret, settings.compression)
        self.memo = MemoLayer()
        self.disk = DiskLayer(settings.dir, settings.namespace)
        self.redis: RedisLayer | None = None
        self.fail_open_remote: FailOpenRemote | None = None
        self.sync_remote: SyncRemote | None = None
        if settings.has_remote and settings.enabled:
            from .layers.redis import RedisLayer  # noqa: PLC0415
            from .remote import FailOpenRemote, SyncRemote  # noqa: PLC0415

            self.redis = RedisLayer(settings)
            breaker = CircuitBreaker(settings.breaker_cooldown, settings.breaker_max_cooldown)
            self.fail_open_remote = FailOpenRemote(self.redis, stats, breaker)
            if owner == "dcache" and settings.determinism == "global":
                self.sync_remote = SyncRemote(self.redis, stats, deadline=settings.retry_deadline)
        self.sync_layer: Layer[bytes] = self.sync_remote or self.disk
        self.publisher: StatsPublisher | None = None
        if self.redis is not None and not settings.read_only and settings.stats_interval > 0:
            from .publisher import StatsPublisher  # noqa: PLC0415

            self.publisher = StatsPublisher(self.redis, stats, owner, settings.stats_interval)
        self._backfill = _Backfiller(self.disk)
        self._bad_logged: set[str] = set()

    # -- memo and backfill ---------------------------------------------------------

    def remember(self, key: EntryKey, value: Any, blob: bytes) -> MemoEntry:
        """Put a decoded value in the memo; a racing thread's entry wins and is returned."""
        entry = MemoEntry(value, blob, key.callee)
        if self.memo.insert(key, entry) is Outcome.WRITTEN:
            return entry
        return self.memo.get(key) or entry

    def backfill_disk(self, key: EntryKey, blob: bytes) -> None:
        """Fill the disk layer off the caller's path: a remote hit costs one round trip."""
        self._backfill.put(key, blob)

    def note_disk_error(self, exc: exceptions.DiskLayerError) -> None:
        """fcache serves through a sick disk: count it, warn once per process."""
        self.stats.disk_errors += 1
        level = logging.WARNING if self.stats.disk_errors == 1 else logging.DEBUG
        logger.log(level, "%s; continuing without the disk layer for this call", exc)

    def note_bad_entry(
        self, layer: Layer[bytes], key: EntryKey, exc: exceptions.ValueDecodingError
    ) -> None:
        if isinstance(exc, exceptions.UnverifiedEntryError):
            self.stats.unverified_entries += 1
            what = "does not verify with this process's secret (left in place)"
        else:
            self.stats.corrupt_entries += 1
            what = "is corrupt"
        level = logging.WARNING if key.digest not in self._bad_logged else logging.DEBUG
        self._bad_logged.add(key.digest)
        logger.log(level, "%s entry %s/%s %s: %s", layer.name, key.callee, key.digest, what, exc)

    # -- deterministic synchronization ------------------------------------------

    def require_strong_consistency(self) -> None:
        from . import fitness  # noqa: PLC0415

        if self.sync_remote is None or self.redis is None:
            return
        report = self.sync_remote.retrying(
            lambda: fitness.inspect(self.redis, read_config=False),  # type: ignore[arg-type]
            "INFO",
        )
        problems = report.blocking_problems(self.settings)
        if problems:
            raise exceptions.DeterministicCachingRequiresStrongConsistencyError(
                f"global determinism needs strong consistency from redis at "
                f"{self.settings.server_name}: " + "; ".join(problems)
            )

    def single_flight(self, key: EntryKey, compute_blob: Callable[[], bytes]) -> bytes:
        """The entry's first-written envelope; computed here only if nobody has it."""
        if self.sync_remote is not None:
            return self.sync_remote.single_flight(key, compute_blob)
        return self._local_single_flight(key, compute_blob)

    def _local_single_flight(self, key: EntryKey, compute_blob: Callable[[], bytes]) -> bytes:
        existing = self.disk.get(key)
        if existing is not None:
            return existing
        started = time.monotonic()
        with self._file_lock(key):
            waited = time.monotonic() - started
            self.stats.lock_acquisitions += 1
            if waited > 0.001:
                self.stats.lock_waits += 1
                self.stats.lock_wait_seconds += waited
            existing = self.disk.get(key)
            if existing is not None:
                return existing
            blob = compute_blob()
            if self.disk.insert(key, blob) is Outcome.WRITTEN:
                self.stats.inserts += 1
                return blob
            return self.disk.get(key) or blob

    @contextlib.contextmanager
    def _file_lock(self, key: EntryKey) -> Iterator[None]:
        path = self.disk.lock_path(key)
        with contextlib.ExitStack() as stack:
            try:
                flock = locks.file_lock(path)
                stack.enter_context(locks.acquire_file_lock(flock, self.settings.lock_timeout))
            except OSError as exc:  # the lock directory cannot be created or opened
                raise exceptions.DiskLayerError(f"disk layer: cannot lock {path}: {exc}") from exc
            yield

    # -- lifecycle -----------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        self._backfill = _Backfiller(self.disk)
        if self.redis is not None:
            self.redis.after_fork_in_child()
        if self.publisher is not None:
            self.publisher.after_fork_in_child()

    def close(self) -> None:
        self._backfill.flush(BACKFILL_FLUSH_SECONDS)
        if self.publisher is not None:
            self.publisher.close()
        if self.redis is not None:
            self.redis.close()


class _Backfiller:
    """A daemon thread writing remote hits to disk; flushed at exit, rebuilt after fork."""

    def __init__(self, disk: DiskLayer) -> None:
        self._disk = disk
        self._queue: queue.Queue[tuple[EntryKey, bytes] | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._start_lock = threading.Lock()

    def put(self, key: EntryKey, blob: bytes) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="redis_cache-backfill", daemon=True
                    )
                    self._thread.start()
                    atexit.register(self.flush, BACKFILL_FLUSH_SECONDS)
        try:
            self._queue.put_nowait((key, blob))
        except queue.Full:
            logger.debug("backfill queue full; %s stays remote-only here", key.digest)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                key, blob = item
                self._disk.insert(key, blob)
            except exceptions.DiskLayerError as exc:
                logger.debug("disk backfill failed: %s", exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float) -> None:
        """Wait (bounded) until queued backfills are on disk."""
        if self._thread is None or os.getpid() != self._pid:
            return
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
