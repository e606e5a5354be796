"""Counters of one interface in this process: live (:class:`StatsRecorder`) and as
snapshots (:class:`CacheStats`), in total and per callee.

Increments are plain ``+=`` on attributes: under the GIL a racing increment can
at worst lose a count, which is acceptable for operational counters and keeps
the hit path free of locks. Hits, misses and computations are counted per callee
only (a memo hit pays for one increment) and summed when a snapshot is taken.
"""

from __future__ import annotations

from typing import Any

PER_CALLEE = ("memo_hits", "disk_hits", "remote_hits", "misses", "computations", "compute_seconds")


class _HitRatio:
    """``hits`` and ``hit_ratio`` of anything with the per-layer hit and miss counters."""

    __slots__ = ()
    memo_hits: int
    disk_hits: int
    remote_hits: int
    misses: int

    @property
    def hits(self) -> int:
        return self.memo_hits + self.disk_hits + self.remote_hits

    @property
    def hit_ratio(self) -> float | None:
        """Hits over lookups (``None`` before the first)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


class CalleeStats(_HitRatio):
    """One function's hits, misses and computations."""

    __slots__ = PER_CALLEE

    def __init__(self) -> None:
        self.memo_hits = 0
        self.disk_hits = 0
        self.remote_hits = 0
        self.misses = 0
        self.computations = 0
        self.compute_seconds = 0.0

    @property
    def seconds_saved(self) -> float:
        """Hits times the mean computation time (0 until one was computed here)."""
        if not self.computations:
            return 0.0
        return self.hits * self.compute_seconds / self.computations

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PER_CALLEE}

    def copy(self) -> CalleeStats:
        copy = CalleeStats()
        for name in PER_CALLEE:
            setattr(copy, name, getattr(self, name))
        return copy

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v)
        return f"CalleeStats({shown})"


TOTALS = (
    "memo_hits",
    "disk_hits",
    "remote_hits",
    "misses",
    "inserts",
    "insert_conflicts",
    "computations",
    "compute_seconds",
    "corrupt_entries",
    "unverified_entries",
    "oversize_values",
    "remote_errors",
    "remote_refusals",
    "disk_errors",
    "remote_skipped",
    "lock_acquisitions",
    "lock_waits",
    "lock_wait_seconds",
    "takeovers",
    "fencing_rejections",
)


class CacheStats(_HitRatio):
    """A snapshot of an interface's counters since process start (or the last reset).

    Every counter in :data:`TOTALS` is an attribute, keyword-constructible, compared
    by value; ``callees`` holds each function's counters. A plain class, not a
    dataclass, so that ``import redis_cache`` does not load :mod:`dataclasses`.
    """

    __slots__ = (*TOTALS, "callees")
    memo_hits: int
    disk_hits: int
    remote_hits: int
    misses: int
    inserts: int
    insert_conflicts: int
    computations: int
    compute_seconds: float
    corrupt_entries: int
    unverified_entries: int
    oversize_values: int
    remote_errors: int
    remote_refusals: int
    disk_errors: int
    remote_skipped: int
    lock_acquisitions: int
    lock_waits: int
    lock_wait_seconds: float
    takeovers: int
    fencing_rejections: int
    callees: dict[str, CalleeStats]

    def __init__(self, *, callees: dict[str, CalleeStats] | None = None, **counters: float) -> None:
        unknown = counters.keys() - set(TOTALS)
        if unknown:
            raise TypeError(f"CacheStats has no counter {sorted(unknown)[0]!r}")
        for name in TOTALS:
            setattr(self, name, counters.get(name, 0.0 if name.endswith("seconds") else 0))
        self.callees = {} if callees is None else callees

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheStats):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"CacheStats({shown})"

    @property
    def seconds_saved(self) -> float:
        """What the hits saved, each at its callee's mean computation time here."""
        return sum(c.seconds_saved for c in self.callees.values())

    def as_dict(self) -> dict[str, float]:
        """The totals, without the per-callee view."""
        return {name: getattr(self, name) for name in TOTALS}

    def snapshot(self) -> CacheStats:
        return CacheStats(**self.as_dict(), callees={k: v.copy() for k, v in self.callees.items()})


_TOTALS = tuple(name for name in TOTALS if name not in PER_CALLEE)


class StatsRecorder:
    """The live counters of one interface: totals, and hits and misses per callee."""

    inserts: int
    insert_conflicts: int
    corrupt_entries: int
    unverified_entries: int
    oversize_values: int
    remote_errors: int
    remote_refusals: int
    disk_errors: int
    remote_skipped: int
    lock_acquisitions: int
    lock_waits: int
    lock_wait_seconds: float
    takeovers: int
    fencing_rejections: int

    def __init__(self) -> None:
        self.callees: dict[str, CalleeStats] = {}
        self.reset()

    def callee(self, name: str) -> CalleeStats:
        """The counters of one callee (created on first use)."""
        found = self.callees.get(name)
        if found is None:
            found = self.callees.setdefault(name, CalleeStats())
        return found

    def snapshot(self) -> CacheStats:
        """Totals with every callee's counters summed in, and a copy of each callee's."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _TOTALS}
        callees = {name: counters.copy() for name, counters in list(self.callees.items())}
        for name in PER_CALLEE:
            values[name] = sum(getattr(c, name) for c in callees.values())
        return CacheStats(**values, callees=callees)

    def as_dict(self) -> dict[str, float]:
        return self.snapshot().as_dict()

    def reset(self) -> None:
        for name in _TOTALS:
            setattr(self, name, 0.0 if name.endswith("seconds") else 0)
        for counters in self.callees.values():
            counters.__init__()  # type: ignore[misc]
