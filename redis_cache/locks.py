"""Timeouts for process and file locks, with the seed's blocking semantics.

``timeout`` everywhere: ``None`` means the configured default
(``REDIS_CACHE_LOCK_TIMEOUT``), ``BLOCKING`` (-1) waits forever, ``NON_BLOCKING``
(0) tries once, anything else is seconds. A lock that cannot be had in time is a
``LockTimeoutError`` (threads) or ``FileLockTimeoutError`` (files), never a
silent wait. The distributed lease lock lives in :mod:`redis_cache.lease`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import exceptions

if TYPE_CHECKING:
    from pathlib import Path

    import filelock

BLOCKING = -1.0
NON_BLOCKING = 0.0
DEFAULT_TIMEOUT = 60.0

# flock() is cheap to retry; a short poll keeps a waiter from sleeping through a release.
FILE_LOCK_POLL_INTERVAL = 0.002


def _effective(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout


@contextmanager
def acquire_thread_lock(
    lock: threading.Lock | threading.RLock,
    timeout: float | None = None,
    default: float = DEFAULT_TIMEOUT,
) -> Iterator[None]:
    """Hold ``lock`` for the block, or raise :class:`LockTimeoutError`."""
    wait = _effective(timeout, default)
    acquired = lock.acquire(blocking=False) if wait == NON_BLOCKING else lock.acquire(timeout=wait)
    if not acquired:
        raise exceptions.LockTimeoutError(lock, wait)
    try:
        yield
    finally:
        lock.release()


def file_lock(path: Path) -> filelock.FileLock:
    """A fresh per-call lock object: one open file each, so threads exclude each other too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import filelock  # noqa: PLC0415 - 30 ms to import: only file locks pay for it

    return filelock.FileLock(str(path), thread_local=False, is_singleton=False)


@contextmanager
def acquire_file_lock(
    flock: filelock.BaseFileLock,
    timeout: float | None = None,
    default: float = DEFAULT_TIMEOUT,
) -> Iterator[None]:
    """Hold ``flock`` for the block, or raise :class:`FileLockTimeoutError`."""
    wait = _effective(timeout, default)
    try:
        flock.acquire(
            timeout=wait,
            poll_interval=FILE_LOCK_POLL_INTERVAL,
            blocking=wait != NON_BLOCKING,
        )
    except _timeout() as exc:
        raise exceptions.FileLockTimeoutError(flock.lock_file, wait) from exc
    try:
        yield
    finally:
        flock.release()


def _timeout() -> type[Exception]:
    import filelock  # noqa: PLC0415

    return filelock.Timeout
