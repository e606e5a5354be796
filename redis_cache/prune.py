"""Least-recently-used pruning of the disk layer (``REDIS_CACHE_DISK_MAX_BYTES``, ``prune``).

Safe while other processes of the machine read and write it:

- Entries are immutable files, so removing one is an ``unlink``: a reader that has
  it open still reads it whole, a reader that opens it afterwards gets a miss.
- An entry is removed only if it is still the file the scan saw (same inode, same
  mtime): one that was used (a hit refreshes its mtime) or rewritten since is kept.
- A racing insert of an entry being removed either loses to it (and the key is a
  miss afterwards) or lands after the unlink: either way the layer stays consistent.
- One pruner per disk layer at a time, by a file lock: a worker that finds it held
  skips its check; ``redis-cache prune`` waits for it.
- Only ``fcache`` entries count and are removed. ``dcache`` entries on disk exist
  under local determinism, where the disk is the synchronization layer: removing
  one would let a later caller compute a different "first" result.
- Leftovers of killed writers (temporaries, set-aside files) older than an hour go too.

Sizes are what the files occupy on disk (``du``), not their lengths: a 470-byte
entry takes a 4 KiB block. Pruning goes down to 90% of the bound, so that the
next few writes do not prune again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import exceptions, locks
from .layers.disk import DiskFile, DiskLayer, remove_path

LOW_WATER = 0.9
STALE_SECONDS = 3600.0

Progress = Callable[[int, int], None]


@dataclass
class PruneReport:
    """What a prune found and did (or, with ``dry_run``, would do)."""

    root: str
    max_bytes: int
    dry_run: bool = False
    entries: int = 0  # fcache entries before
    bytes: int = 0  # their disk usage before
    removed: int = 0
    removed_bytes: int = 0
    kept_in_use: int = 0  # chosen, but used or rewritten since the scan
    leftovers: int = 0  # stale temporaries removed
    seconds: float = 0.0

    @property
    def target(self) -> int:
        return int(self.max_bytes * LOW_WATER)

    @property
    def bytes_after(self) -> int:
        return self.bytes - self.removed_bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "max_bytes": self.max_bytes,
            "target_bytes": self.target,
            "dry_run": self.dry_run,
            "entries": self.entries,
            "bytes": self.bytes,
            "removed": self.removed,
            "removed_bytes": self.removed_bytes,
            "bytes_after": self.bytes_after,
            "kept_in_use": self.kept_in_use,
            "leftovers": self.leftovers,
            "seconds": round(self.seconds, 3),
        }


def plan(files: Iterable[DiskFile], max_bytes: int) -> tuple[list[DiskFile], int, int]:
    """``(victims, entries, bytes)``: the least recently used fcache entries to remove.

    Nothing goes while the total is within ``max_bytes``; past it, the oldest go
    until the total is at most ``LOW_WATER`` of it.
    """
    candidates = [f for f in files if f.is_entry and f.regular and f.space == "fcache"]
    total = sum(f.usage for f in candidates)
    if total <= max_bytes:
        return [], len(candidates), total
    target = int(max_bytes * LOW_WATER)
    candidates.sort(key=lambda f: f.mtime_ns)
    victims, left = [], total
    for f in candidates:
        if left <= target:
            break
        victims.append(f)
        left -= f.usage
    return victims, len(candidates), total


def prune(
    layer: DiskLayer,
    max_bytes: int,
    *,
    dry_run: bool = False,
    wait: float = locks.NON_BLOCKING,
    progress: Progress | None = None,
) -> PruneReport | None:
    """Bring the layer's fcache entries within ``max_bytes``; ``None`` if another pruner runs.

    ``wait`` is how long to wait for that other pruner (0: skip at once, as workers do).
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    layer.root.mkdir(parents=True, exist_ok=True)
    try:
        with locks.acquire_file_lock(locks.file_lock(layer.prune_lock_path), wait):
            return _prune_locked(layer, max_bytes, dry_run, progress)
    except exceptions.FileLockTimeoutError:
        return None


def _prune_locked(
    layer: DiskLayer, max_bytes: int, dry_run: bool, progress: Progress | None
) -> PruneReport:
    started = time.monotonic()
    report = PruneReport(str(layer.root), max_bytes, dry_run)
    files = list(layer.scan())
    stale_before = time.time_ns() - int(STALE_SECONDS * 1e9)
    for f in files:
        if not f.is_entry and f.mtime_ns < stale_before:
            report.leftovers += 1
            if not dry_run:
                remove_path(f.path)
    victims, report.entries, report.bytes = plan(files, max_bytes)
    for f in victims:
        if dry_run or _remove_if_unchanged(f):
            report.removed += 1
            report.removed_bytes += f.usage
        else:
            report.kept_in_use += 1
        if progress is not None and report.removed % 1000 == 0:
            progress(report.removed, report.removed_bytes)
    if not dry_run:
        _stamp(layer)
    report.seconds = time.monotonic() - started
    return report


def _remove_if_unchanged(f: DiskFile) -> bool:
    try:
        st = os.lstat(f.path)
    except FileNotFoundError:
        return False
    if (st.st_ino, st.st_mtime_ns) != (f.inode, f.mtime_ns):
        return False  # a hit refreshed it, or a writer replaced it: keep it
    try:
        os.unlink(f.path)
    except FileNotFoundError:
        return False
    return True


def _stamp(layer: DiskLayer) -> None:
    """Tell other processes a check just happened (they look at this file's mtime)."""
    with contextlib.suppress(OSError):
        layer.prune_stamp_path.touch()


# --------------------------------------------------------------------------- usage


@dataclass
class Usage:
    entries: int = 0
    bytes: int = 0  # file lengths
    disk_bytes: int = 0  # what they occupy

    def add(self, f: DiskFile) -> None:
        self.entries += 1
        self.bytes += f.size
        self.disk_bytes += f.usage

    def as_json(self) -> dict[str, int]:
        return {"entries": self.entries, "bytes": self.bytes, "disk_bytes": self.disk_bytes}


@dataclass
class DiskUsage:
    """This machine's disk layer of one namespace: per interface and per callee."""

    root: str
    max_bytes: int
    total: Usage = field(default_factory=Usage)
    spaces: dict[str, Usage] = field(default_factory=dict)
    callees: dict[str, Usage] = field(default_factory=dict)
    leftovers: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "max_bytes": self.max_bytes,
            **self.total.as_json(),
            "spaces": {name: u.as_json() for name, u in sorted(self.spaces.items())},
            "callees": {name: u.as_json() for name, u in sorted(self.callees.items())},
            "leftovers": self.leftovers,
        }


def disk_usage(layer: DiskLayer, progress: Progress | None = None) -> DiskUsage:
    """Count entries and bytes from the directory tree alone (one lstat per file)."""
    result = DiskUsage(str(layer.root), layer.max_bytes)
    for f in layer.scan():
        if not (f.is_entry and f.regular):
            result.leftovers += 1
            continue
        for usage in (
            result.total,
            result.spaces.setdefault(f.space, Usage()),
            result.callees.setdefault(f.callee, Usage()),
        ):
            usage.add(f)
        if progress is not None and result.total.entries % 1000 == 0:
            progress(result.total.entries, result.total.bytes)
    return result
