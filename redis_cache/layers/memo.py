"""In-process memo: decoded values, so a hit costs a dict lookup and no decoding."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import NamedTuple

from .base import EntryKey, Layer, Outcome


class MemoEntry(NamedTuple):
    """A decoded value with the envelope it came from (kept for dumps and backfills).

    A NamedTuple: built on every fill, it costs a quarter of a frozen dataclass.
    """

    value: object
    blob: bytes
    callee: str


class MemoLayer(Layer[MemoEntry]):
    name = "memo"

    def __init__(self) -> None:
        self._entries: dict[str, MemoEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: EntryKey) -> MemoEntry | None:
        return self._entries.get(key.digest)

    def insert(self, key: EntryKey, item: MemoEntry) -> Outcome:
        with self._lock:
            if key.digest in self._entries:
                return Outcome.EXISTED
            self._entries[key.digest] = item
            return Outcome.WRITTEN

    def discard(self, key: EntryKey, expected: MemoEntry) -> bool:
        with self._lock:
            if self._entries.get(key.digest) is not expected:
                return False
            del self._entries[key.digest]
            return True

    def items(self) -> Iterator[tuple[str, MemoEntry]]:
        with self._lock:
            snapshot = list(self._entries.items())
        return iter(snapshot)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
