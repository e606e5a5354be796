"""The contract every storage layer keeps: first writer wins, nothing is overwritten."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, Literal, NamedTuple, TypeVar

T = TypeVar("T")

Space = Literal["fcache", "dcache"]


class EntryKey(NamedTuple):
    """One entry's identity: the callee for operators, the digest for storage.

    ``space`` is the interface whose entry this is. The digest already differs per
    interface (dcache must never adopt a raced fcache entry); the space also shows in
    Redis key names so that operators can dump, count or clear one interface's entries.
    A named tuple, not a frozen dataclass: every lookup builds one and hashes it, and a
    tuple does both in C (half and a third of the time).
    """

    callee: str
    digest: str
    space: Space

    @property
    def key_id(self) -> bytes:
        """What the codec binds an entry's integrity tag to."""
        return self.digest.encode()


class Outcome(enum.Enum):
    """What an insert did: callers decide from this, never from a bare bool."""

    WRITTEN = "written"  # our item is stored
    EXISTED = "existed"  # an item was already there; ours was dropped (first writer wins)
    UNAVAILABLE = "unavailable"  # the layer could not take it (down, too large, read-only)


class Layer(ABC, Generic[T]):
    """A key → stored item map with first-writer-wins insert.

    ``get`` returns ``None`` for a miss (stored items are never ``None``).
    ``discard`` removes an entry only if it still holds ``expected``: it repairs a
    corrupt entry without destroying a good one a racing writer just put there.
    """

    name: str

    @abstractmethod
    def get(self, key: EntryKey) -> T | None: ...

    @abstractmethod
    def insert(self, key: EntryKey, item: T) -> Outcome: ...

    @abstractmethod
    def discard(self, key: EntryKey, expected: T) -> bool: ...

    def get_many(self, keys: Sequence[EntryKey]) -> list[T | None]:
        """Several entries at once; layers with a batched read override this."""
        return [self.get(key) for key in keys]
