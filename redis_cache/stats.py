"""Per-process counters of one interface.

Increments are plain ``+=`` on attributes: under the GIL a racing increment can
at worst lose a count, which is acceptable for operational counters and keeps
the memo hit path free of locks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class CacheStats:
    """Counters since process start (or the last :meth:`reset`)."""

    memo_hits: int = 0
    disk_hits: int = 0
    remote_hits: int = 0
    misses: int = 0
    inserts: int = 0
    insert_conflicts: int = 0
    computations: int = 0
    corrupt_entries: int = 0
    unverified_entries: int = 0
    oversize_values: int = 0
    remote_errors: int = 0
    remote_refusals: int = 0
    disk_errors: int = 0
    remote_skipped: int = 0
    lock_acquisitions: int = 0
    lock_waits: int = 0
    lock_wait_seconds: float = 0.0
    takeovers: int = 0
    fencing_rejections: int = 0

    @property
    def hits(self) -> int:
        return self.memo_hits + self.disk_hits + self.remote_hits

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def snapshot(self) -> CacheStats:
        return CacheStats(**asdict(self))

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)
