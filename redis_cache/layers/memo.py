"""In-process memo: decoded values, so a hit costs a dict lookup and no decoding.

Bounded by ``REDIS_CACHE_MEMO_MAX_BYTES``. Each value is counted once, by the
size of its encoded envelope (or its length, for ``bytes``); envelopes are not
kept (a dump re-encodes what it writes). Eviction is "second chance": a hit only
sets ``used``, and the oldest entries lose that flag or their place. It keeps
what least-recently-used keeps without reordering anything on the hit path.

Record wrappers keep fast indexes of their own (raw arguments → entry); an
entry remembers where it is indexed, so evicting it drops those references too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .. import forksafe
from .base import EntryKey, Layer, Outcome


class MemoEntry:
    """A memoized value; ``used`` is set by every hit and cleared by eviction's sweep."""

    __slots__ = ("callee", "digest", "indexed", "size", "used", "value")

    def __init__(self, value: Any, size: int, key: EntryKey) -> None:
        self.value = value
        self.size = size
        self.callee = key.callee
        self.digest = key.digest
        self.used = False
        self.indexed: list[tuple[dict[Any, MemoEntry], Any]] | None = None

    def __repr__(self) -> str:
        return f"MemoEntry({self.callee}, {self.size} bytes)"


class MemoLayer(Layer[MemoEntry]):
    name = "memo"

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[str, MemoEntry] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        forksafe.register(self)

    @property
    def bytes(self) -> int:
        """Bytes counted against the bound."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: EntryKey) -> MemoEntry | None:
        entry = self._entries.get(key.digest)
        if entry is not None:
            entry.used = True
        return entry

    def insert(self, key: EntryKey, item: MemoEntry) -> Outcome:
        """Keep ``item`` unless an entry exists or it alone exceeds the bound."""
        if item.size > self.max_bytes:
            return Outcome.UNAVAILABLE
        with self._lock:
            if key.digest in self._entries:
                return Outcome.EXISTED
            self._entries[key.digest] = item
            self._bytes += item.size
            if self._bytes > self.max_bytes:
                self._evict(keep=key.digest)
            return Outcome.WRITTEN

    def index(self, entry: MemoEntry, fast: dict[Any, MemoEntry], fast_key: Any) -> None:
        """Also reach ``entry`` from a wrapper's fast index, until it is evicted."""
        with self._lock:
            if self._entries.get(entry.digest) is not entry:
                return  # not (or no longer) memoized: a fast hit must not outlive it
            fast[fast_key] = entry
            if entry.indexed is None:
                entry.indexed = []
            entry.indexed.append((fast, fast_key))

    def discard(self, key: EntryKey, expected: MemoEntry) -> bool:
        with self._lock:
            if self._entries.get(key.digest) is not expected:
                return False
            self._drop(key.digest)
            return True

    def clear(self) -> None:
        with self._lock:
            for digest in list(self._entries):
                self._drop(digest)

    def items(self) -> Iterator[tuple[str, MemoEntry]]:
        """A snapshot of (digest, entry), oldest first."""
        with self._lock:
            return iter(list(self._entries.items()))

    def _evict(self, keep: str) -> None:
        """Sweep from the oldest entry: used ones get a second chance at the end."""
        entries = self._entries
        while self._bytes > self.max_bytes and len(entries) > 1:
            digest = next(iter(entries))
            entry = entries[digest]
            if digest == keep:
                entries[digest] = entries.pop(digest)
                continue
            if entry.used:
                entry.used = False
                entries[digest] = entries.pop(digest)
                continue
            self._drop(digest)

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest)
        self._bytes -= entry.size
        for fast, fast_key in entry.indexed or ():
            if fast.get(fast_key) is entry:
                del fast[fast_key]
        entry.indexed = None

    def after_fork_in_child(self) -> None:
        """The lock may have been held by a thread that does not exist in the child."""
        self._lock = threading.Lock()
