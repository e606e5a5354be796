"""One interface's layers in one process, built from settings on first use.

A :class:`Runtime` owns what a process needs to serve an interface: the codec,
the memo, the disk layer, the Redis layer (when configured), the thread that
copies remote hits to disk, the stats publisher, and the :class:`Policy` that
wires them. It is rebuilt after ``close()``; after ``fork()`` it resets its locks
and threads (the Redis client is rebuilt by its provider).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import dumpfile, exceptions, forksafe, hooks, keys, locks, policy
from .codec import Codec
from .config import Settings
from .layers.base import EntryKey, Layer, Outcome, Space
from .layers.disk import DiskLayer
from .layers.memo import MemoEntry, MemoLayer
from .retry import Retrier
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .layers.redis import RedisLayer
    from .publisher import StatsPublisher

logger = logging.getLogger("redis_cache")

# How long close() and process exit wait for queued disk backfills.
BACKFILL_FLUSH_SECONDS = 5.0
# Backfills are written once the process has made no cache call for this long.
IDLE_SECONDS = 0.005
# Blobs waiting for an idle moment are held in memory: torch entries run to tens of
# MiB, so a burst of remote hits must not queue more than this (the rest stay remote).
BACKFILL_QUEUE_BYTES = 64 * 1024 * 1024
BACKFILL_QUEUE_ENTRIES = 10_000
UNBOUNDED = 1 << 62


class Runtime:
    """Settings, codec, layers and policy of one interface in this process."""

    def __init__(self, settings: Settings, space: Space, stats: StatsRecorder) -> None:
        policy.validate(settings, space)
        self.settings = settings
        self.space = space
        self.stats = stats
        self.codec = Codec(settings.secret, settings.compression)
        bound = UNBOUNDED if policy.unbounded_memo(settings, space) else settings.memo_max_bytes
        self.memo = MemoLayer(bound)
        self.disk = DiskLayer(settings.dir, settings.namespace, max_bytes=settings.disk_max_bytes)
        self.redis: RedisLayer | None = None
        self.publisher: StatsPublisher | None = None
        if settings.has_remote and settings.enabled:
            from .layers.redis import RedisLayer  # noqa: PLC0415 - redis-py only when used

            # fcache entries may expire (REDIS_CACHE_TTL); deterministic ones never do.
            self.redis = RedisLayer(settings, ttl=settings.ttl if space == "fcache" else 0)
            if settings.remote_writable and settings.stats_interval > 0:
                from .publisher import StatsPublisher  # noqa: PLC0415

                self.publisher = StatsPublisher(self.redis, stats, space, settings.stats_interval)
        self._backfiller = Backfiller()
        forksafe.register(self)
        self._bad_logged: set[str] = set()
        self._oversize_logged = False
        try:
            self.policy = policy.build(settings, space, self)
            if policy.needs_fitness_check(settings, space):
                self._require_strong_consistency()
            if space == "dcache" and settings.prepopulate is not None:
                self.prepopulate(settings.prepopulate)
        except BaseException:
            self.close()  # its client and threads; the next call builds anew
            raise

    # -- memo and backfill ---------------------------------------------------------

    def remember(self, key: EntryKey, value: Any, size: int) -> MemoEntry:
        """Memoize a value; a racing thread's entry wins and is returned."""
        entry = MemoEntry(value, size, key)
        if self.memo.insert(key, entry) is Outcome.EXISTED:
            return self.memo.get(key) or entry
        return entry

    def backfill(self, layer: Layer[bytes], key: EntryKey, blob: bytes) -> None:
        """Copy an entry into ``layer`` off the caller's path: a remote hit costs one trip."""
        self._backfiller.put(layer, key, blob)

    def touch(self) -> None:
        """A lookup is running (backfills wait until the process idles)."""
        self._backfiller.active = time.monotonic()

    def note_bad_entry(
        self, layer: Layer[Any], key: EntryKey, exc: exceptions.ValueDecodingError
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
        if hooks.active:
            hooks.emit(hooks.Event("error", self.space, key.callee, layer.name, error=exc))

    def note_oversize(self, key: EntryKey, exc: exceptions.ValueTooLargeError) -> None:
        """fcache keeps a result too large for any envelope in this process; warn once."""
        self.stats.oversize_values += 1
        level = logging.DEBUG if self._oversize_logged else logging.WARNING
        self._oversize_logged = True
        logger.log(level, "%s/%s is kept in this process only: %s", key.callee, key.digest, exc)

    # -- deterministic ---------------------------------------------------------------

    def _require_strong_consistency(self) -> None:
        """Refuse a server that cannot keep one result per key; warn what it risks.

        CONFIG GET is not read: worker ACLs do not grant it, so persistence is known
        only from INFO (AOF on, or not).
        """
        from . import fitness  # noqa: PLC0415

        layer = self.redis
        if layer is None:
            return
        retry = Retrier(self.settings.retry_deadline, stats=self.stats)
        report = retry(lambda: fitness.inspect(layer, read_config=False), "INFO")
        problems = report.blocking_problems(self.settings)
        if problems:
            raise exceptions.DeterministicCachingRequiresStrongConsistencyError(
                f"global determinism needs strong consistency from redis at "
                f"{self.settings.server_name}: " + "; ".join(problems)
            )
        for warning in report.warnings(self.settings):
            logger.warning("dcache at %s: %s", self.settings.server_name, warning)

    def prepopulate(self, path: Path) -> None:
        loaded = 0
        for record in dumpfile.read(path):
            if record.space != "dcache":
                continue  # a dump of a whole namespace may carry fcache entries too
            key = EntryKey(record.callee, record.digest, "dcache")
            try:
                value = self.codec.decode(key.key_id, record.blob)
            except exceptions.ValueDecodingError as exc:
                raise exc.located(f"entry {record.callee}/{record.digest} of {path}") from exc
            entry = MemoEntry(value, len(record.blob), key)
            loaded += self.memo.insert(key, entry) is Outcome.WRITTEN
        logger.info("prepopulated dcache memo with %d entries from %s", loaded, path)

    def dump(self, path: Path) -> int:
        """Merge the memo into the dump at ``path`` (locked: processes dump at exit together)."""
        flock = locks.file_lock(path.with_name(f".{path.name}.lock"))
        with locks.acquire_file_lock(flock, self.settings.lock_timeout):
            return self._merge_into(path)

    def _merge_into(self, path: Path) -> int:
        """Equal values merge; different ones raise and write nothing."""
        merged = {r.digest: r for r in dumpfile.read(path)} if path.exists() else {}
        for record in self._dump_records():
            previous = merged.setdefault(record.digest, record)
            if previous is record or previous.blob == record.blob:
                continue
            key = EntryKey(record.callee, record.digest, self.space)
            if not self._same_entry(key, previous.blob, record.blob):
                raise exceptions.DeterministicCachingIMCDumpConflictError(
                    f"dump {path} holds a different value for {record.callee}/{record.digest}"
                )
        return dumpfile.write(path, merged.values())

    def _same_entry(self, key: EntryKey, a: bytes, b: bytes) -> bool:
        """The same result: equal canonical encodings (``1`` and ``True``, ``0.0`` and
        ``-0.0`` differ), or, for results keys cannot encode (signed pickles), the
        same serialized payload whatever the compression."""
        try:
            first, second = self.codec.decode(key.key_id, a), self.codec.decode(key.key_id, b)
            same = keys.same_value(first, second)
            if same is None:
                return self.codec.payload(key.key_id, a) == self.codec.payload(key.key_id, b)
        except exceptions.ValueDecodingError:
            return False
        return same

    def _dump_records(self) -> list[dumpfile.DumpRecord]:
        records = []
        for digest, entry in self.memo.items():
            key = EntryKey(entry.callee, digest, self.space)
            blob = self.codec.encode(key.key_id, entry.value)
            records.append(dumpfile.DumpRecord(entry.callee, digest, blob, self.space))
        return records

    # -- lifecycle -----------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        self._backfiller = Backfiller()
        if self.redis is not None:
            self.redis.after_fork_in_child()
        if self.publisher is not None:
            self.publisher.after_fork_in_child()

    def close(self) -> None:
        self._backfiller.close(BACKFILL_FLUSH_SECONDS)
        if self.publisher is not None:
            self.publisher.close()
        if self.redis is not None:
            self.redis.close()


class Backfiller:
    """A daemon thread copying entries into lower layers; started lazily, stopped by close.

    It writes only while the process has made no cache call for ``IDLE_SECONDS``:
    writing a file holds the GIL for ~40 µs, and a burst of remote hits (a worker
    loading its entries) would pay it on every next call. A compile worker is idle
    between calls; the queue is written then, or at ``close()`` and exit. Each entry
    is queued once, and the queue is bounded in entries and bytes: what does not fit
    stays in the upper layer, to be copied on a later hit.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Layer[bytes], EntryKey, bytes] | None] = queue.Queue()
        self._pending: set[tuple[int, EntryKey]] = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self.active = 0.0  # monotonic time of the last cache call (see touch)
        self._draining = False
        self._queued_bytes = 0

    def touch(self) -> None:
        """A cache call is running: hold the writes back until the process idles."""
        self.active = time.monotonic()

    def put(self, layer: Layer[bytes], key: EntryKey, blob: bytes) -> None:
        if self._thread is None:
            with self._lock:
                if self._closed:
                    return
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="redis_cache-backfill", daemon=True
                    )
                    self._thread.start()
                    _LIVE.add(self)
        job = (id(layer), key)
        with self._lock:
            if job in self._pending:  # a repeated hit before the first copy was written
                return
            if (
                self._queued_bytes + len(blob) > BACKFILL_QUEUE_BYTES
                or len(self._pending) >= BACKFILL_QUEUE_ENTRIES
            ):
                logger.debug("backfill queue full; %s stays in the upper layer only", key.digest)
                return
            self._queued_bytes += len(blob)
            self._pending.add(job)
        self._queue.put_nowait((layer, key, blob))  # bounded by the two checks above

    def _done(self, layer: Layer[bytes], key: EntryKey, size: int) -> None:
        with self._lock:
            self._queued_bytes -= size
            self._pending.discard((id(layer), key))

    def _run(self) -> None:
        while self._write_next():
            pass

    def _write_next(self) -> bool:
        """Write one queued entry; False on the stop sentinel. The item is dropped
        before it is marked done, so no blob outlives its write in this frame."""
        item = self._queue.get()
        try:
            if item is None:
                return False
            self._write(*item)
            return True
        finally:
            del item
            self._queue.task_done()

    def _write(self, layer: Layer[bytes], key: EntryKey, blob: bytes) -> None:
        try:
            self._wait_for_idle()
            layer.insert(key, blob)  # fail-open layers never raise a storage error
        except Exception:
            logger.debug("backfill of an entry failed", exc_info=True)
        finally:
            self._done(layer, key, len(blob))

    def _wait_for_idle(self) -> None:
        while not self._draining:
            busy = self.active + IDLE_SECONDS - time.monotonic()
            if busy <= 0:
                return
            time.sleep(busy)

    def flush(self, timeout: float) -> None:
        """Write what is queued now, idle or not (bounded by ``timeout``)."""
        if self._thread is None or os.getpid() != self._pid:
            return
        self._draining = True
        try:
            deadline = time.monotonic() + timeout
            while self._queue.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            self._draining = False

    def close(self, timeout: float) -> None:
        """Flush, then stop the thread: a closed runtime leaves no thread behind."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None or os.getpid() != self._pid:
            return
        self.flush(timeout)
        self._queue.put(None)
        thread.join(timeout)
        _LIVE.discard(self)


_LIVE: set[Backfiller] = set()


def _flush_at_exit() -> None:
    for backfiller in list(_LIVE):
        backfiller.flush(BACKFILL_FLUSH_SECONDS)


atexit.register(_flush_at_exit)
