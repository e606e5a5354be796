"""Per-machine layer: one file per entry, shared by every process of the machine.

Layout: ``<dir>/<namespace>/v2/entries/<space>/<callee>/<digest[:2]>/<digest>``.
The space and callee in the path let ``redis-cache stats --local`` count per callee
and let pruning tell ``fcache`` entries from ``dcache`` ones without opening a file.

Writers put the envelope in a temporary file in the target directory, then
``link()`` it to its final name: the link fails if the name exists (first writer
wins) and readers only ever see complete files. No fsync: a file torn by a power
loss fails its integrity check and is repaired like any corrupt entry.

An entry is a regular file or nothing. ``get`` tells apart absent (``None``),
present but unreadable (:class:`DiskLayerError`) and something else at the path,
such as a directory or a dangling symlink (:class:`CorruptEntryError`), which
``discard`` removes whatever ``expected`` is: no such thing is ever a good entry.

Recency for least-recently-used pruning is the file's mtime: a hit sets it to now,
at most once a minute per entry. With ``max_bytes`` > 0, a process that has written
a tenth of the bound, or that finds nobody checked in the last minute, checks the
bound in a background thread (:mod:`redis_cache.prune`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .. import exceptions
from .base import EntryKey, Layer, Outcome, Space

logger = logging.getLogger("redis_cache.disk")

FORMAT_DIR = "v2"
SPACES: tuple[Space, ...] = ("fcache", "dcache")
# A hit refreshes an entry's mtime only if it is older than this: recency to the
# minute is plenty for pruning, and most hits then cost no metadata write.
RECENCY_RESOLUTION = 60.0
# A process checks the bound after writing this fraction of it...
CHECK_FRACTION = 0.1
# ...or on a write when no process of the machine has checked for this long.
CHECK_INTERVAL = 60.0
PRUNE_STAMP = "prune.stamp"
PRUNE_LOCK = "prune.lock"
# Longest callee directory name; longer names are cut and get a hash suffix.
MAX_CALLEE_DIR = 120

# Non-blocking: a FIFO at an entry's path must not hang a reader; no-follow: an
# entry is a regular file, never a symlink to somewhere else.
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_TOUCH_BY_FD = os.utime in os.supports_fd


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=4096)
def callee_dir(callee: str) -> str:
    """The directory name of a callee: percent-quoted, cut to a safe length (cached: a
    process names few callees, and quoting one costs more than the lookup it names)."""
    quoted = urllib.parse.quote(callee, safe="._-") or "%00"
    if len(quoted) <= MAX_CALLEE_DIR:
        return quoted
    digest = hashlib.sha256(callee.encode()).hexdigest()[:16]
    return f"{quoted[: MAX_CALLEE_DIR - 18]}~~{digest}"


def callee_name(directory: str) -> str:
    """The callee a directory holds (a cut name ends in ``…``)."""
    head, cut, _ = directory.partition("~~")
    return urllib.parse.unquote(head) + ("…" if cut else "")


def allocated(size: int, st: os.stat_result | None = None) -> int:
    """Bytes a file occupies on disk (what ``du`` counts), estimated when not stat'ed."""
    blocks = getattr(st, "st_blocks", None) if st is not None else None
    if blocks is not None:
        return int(blocks) * 512
    return -(-size // 4096) * 4096


class DiskFile(NamedTuple):
    """One file under ``entries/``: an entry or a writer's leftover (temporary, set aside)."""

    path: str
    space: Space
    callee: str
    is_entry: bool  # False: a temporary or a discarded file
    regular: bool
    size: int
    usage: int  # allocated bytes
    mtime_ns: int
    inode: int


class DiskLayer(Layer[bytes]):
    name = "disk"

    def __init__(self, root: Path, namespace: str, max_bytes: int = 0) -> None:
        self.root = Path(root) / namespace / FORMAT_DIR
        self.entries = self.root / "entries"
        self._entries = str(self.entries)
        self._locks = self.root / "locks"
        self.max_bytes = max_bytes
        self._trigger = _PruneTrigger(self) if max_bytes > 0 else None

    def path(self, key: EntryKey) -> str:
        digest = key.digest
        return f"{self._entries}/{key.space}/{callee_dir(key.callee)}/{digest[:2]}/{digest}"

    def lock_path(self, key: EntryKey) -> Path:
        return self._locks / f"{key.digest}.lock"

    @property
    def prune_lock_path(self) -> Path:
        """One pruner per disk layer at a time holds this file lock."""
        return self.root / PRUNE_LOCK

    @property
    def prune_stamp_path(self) -> Path:
        """Its mtime is when a pruner last checked the bound."""
        return self.root / PRUNE_STAMP

    # -- read ------------------------------------------------------------------------

    def get(self, key: EntryKey) -> bytes | None:
        """The entry's bytes; ``None`` if absent.

        Raises :class:`DiskLayerError` if it exists but cannot be read, and
        :class:`CorruptEntryError` if what is at its path is not a regular file.
        """
        path = self.path(key)
        if not self._is_a_file(key, path):
            return None  # the common miss costs one lstat()
        try:
            fd = os.open(path, _READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):  # removed since the check
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _not_a_file(key, path, "a symbolic link") from exc
            raise _read_error(path, exc) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_a_file(key, path, _kind(st.st_mode))
            data = _read(fd, st.st_size)
            if time.time() - st.st_mtime > RECENCY_RESOLUTION:
                _touch(fd, path)
            return data
        except OSError as exc:
            raise _read_error(path, exc) from exc
        finally:
            os.close(fd)

    def _is_a_file(self, key: EntryKey, path: str) -> bool:
        """Whether a regular file is there (readable or not: open() tells).

        ``False`` when nothing is; :class:`CorruptEntryError` for anything else.
        """
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:  # a directory on the way cannot be searched
            raise _read_error(path, exc) from exc
        if stat.S_ISREG(st.st_mode):
            return True  # open() tells which: EACCES, or a hit written since access()
        raise _not_a_file(key, path, _kind(st.st_mode))

    # -- write -----------------------------------------------------------------------

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        """First writer wins; ``UNAVAILABLE`` for an fcache item larger than the bound."""
        trigger = self._trigger
        if trigger is not None and key.space == "fcache" and len(item) > self.max_bytes:
            return Outcome.UNAVAILABLE
        try:
            outcome = self._insert(key, item)
        except OSError as exc:  # disk full, read-only, permissions
            raise exceptions.DiskLayerError(
                f"disk layer: writing an entry under {self.root} failed: {exc}"
            ) from exc
        if trigger is not None and outcome is Outcome.WRITTEN:
            trigger.wrote(len(item))
        return outcome

    def _insert(self, key: EntryKey, item: bytes) -> Outcome:
        final = self.path(key)
        directory = os.path.dirname(final)
        tmp = f"{directory}/.tmp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            f = open(tmp, "xb")  # noqa: SIM115 - closed below before linking
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            f = open(tmp, "xb")  # noqa: SIM115
        try:
            with f:
                f.write(item)
            os.link(tmp, final)
            return Outcome.WRITTEN
        except FileExistsError:
            return Outcome.EXISTED
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        """Remove the entry if it holds ``expected``, or if it is not a regular file.

        The entry is moved aside first (atomically) and put back if it turns out to
        be a good one that a racing writer just linked. An unreadable file is put
        back too: it may be another user's, and is not ours to judge.
        """
        final = self.path(key)
        aside = f"{final}.discard-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            os.rename(final, aside)
        except OSError:  # gone already, or not ours to remove: nothing repaired
            return False
        try:
            st = os.lstat(aside)
            if not stat.S_ISREG(st.st_mode):
                return True  # a directory, symlink, FIFO...: removed below
            try:
                fd = os.open(aside, _READ_FLAGS)
                try:
                    if _read(fd, st.st_size) == expected:
                        return True
                finally:
                    os.close(fd)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                os.link(aside, final)
            return False
        finally:
            remove_path(aside)

    # -- listing and pruning ------------------------------------------------------------

    def scan(self) -> Iterator[DiskFile]:
        """Every file under ``entries/``, with what pruning and stats need (one lstat each)."""
        for space in SPACES:
            for callee in _subdirs(f"{self._entries}/{space}"):
                name = callee_name(callee.name)
                for shard in _subdirs(callee.path):
                    for entry in _listdir(shard.path):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:  # pruned or repaired meanwhile
                            continue
                        yield DiskFile(
                            entry.path,
                            space,
                            name,
                            "." not in entry.name,
                            stat.S_ISREG(st.st_mode),
                            st.st_size,
                            allocated(st.st_size, st),
                            st.st_mtime_ns,
                            st.st_ino,
                        )

    def iter_files(self) -> list[Path]:
        """Every entry file (for stats and clear); skips temporaries."""
        return [Path(f.path) for f in self.scan() if f.is_entry and f.regular]

    def wait_for_prune(self, timeout: float | None = None) -> None:
        """Wait for this process's background prune, if one runs (tests, orderly exit)."""
        if self._trigger is not None:
            self._trigger.join(timeout)


class _PruneTrigger:
    """Decides when a process checks the bound; the check runs in a short-lived thread."""

    def __init__(self, layer: DiskLayer) -> None:
        self._layer = layer
        self._pending = 0  # bytes written since this process last started a check
        self._last_look = float("-inf")  # monotonic time of the last look at the stamp
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def wrote(self, size: int) -> None:
        self._pending += allocated(size)
        now = time.monotonic()
        if self._pending < self._layer.max_bytes * CHECK_FRACTION:
            # Many short-lived processes each write little: look at the shared stamp
            # (once a minute per process) so that somebody still checks.
            if now - self._last_look < CHECK_INTERVAL:
                return
            self._last_look = now
            if not self._stamp_is_stale():
                return
        self._pending = 0
        self._last_look = now
        self._start()

    def _stamp_is_stale(self) -> bool:
        try:
            checked = os.stat(self._layer.prune_stamp_path).st_mtime
        except OSError:
            return True
        return time.time() - checked >= CHECK_INTERVAL

    def _start(self) -> None:
        if os.getpid() != self._pid:  # forked: the parent's thread is not ours
            self._pid, self._thread = os.getpid(), None
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="redis_cache-prune", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .. import prune  # noqa: PLC0415 - only processes that prune need it

        try:
            prune.prune(self._layer, self._layer.max_bytes)
        except Exception as exc:  # pruning must never hurt a worker
            logger.warning("pruning the disk layer %s failed: %s", self._layer.root, exc)

    def join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None and os.getpid() == self._pid:
            thread.join(timeout)


# --------------------------------------------------------------------------- helpers


def _read(fd: int, size: int) -> bytes:
    """A whole entry (entries never change once linked, so ``size`` is exact)."""
    data = os.read(fd, size)
    if len(data) == size:
        return data
    chunks = [data]
    while chunk := os.read(fd, max(size, 65536)):
        chunks.append(chunk)
    return b"".join(chunks)


def _touch(fd: int, path: str) -> None:
    """Mark an entry recently used; best effort (read-only mounts, other users' files)."""
    with contextlib.suppress(OSError):
        os.utime(fd if _TOUCH_BY_FD else path)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _not_a_file(key: EntryKey, path: str, kind: str) -> exceptions.CorruptEntryError:
    return exceptions.CorruptEntryError(
        f"disk entry {key.callee}/{key.digest} is {kind}, not a regular file: {path}"
    )


def _read_error(path: str, exc: OSError) -> exceptions.DiskLayerError:
    if isinstance(exc, PermissionError):
        return exceptions.DiskLayerError(f"disk layer: cannot read {path}: permission denied")
    return exceptions.DiskLayerError(f"disk layer: reading {path} failed: {exc}")


def _listdir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirs(path: str) -> list[os.DirEntry[str]]:
    return [e for e in _listdir(path) if e.is_dir(follow_symlinks=False)]


def remove_path(path: str) -> None:
    """Remove a file, link or directory tree; whatever is already gone is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
