"""What each interface does, decided in one place from the settings.

:func:`build` is the only code that reads the modes (deterministic, determinism,
strict, read-only, single flight, enabled). It wires the storage layers into a
:class:`Policy`: which layers a lookup reads, where results are written, what a
hit backfills, which single flight computes a miss, what a bad entry does, and
what strict mode forbids. :class:`~redis_cache.interfaces.CacheInterface` then
runs every call the same way: memo → ``reads`` → ``flight`` → memo.

========================  =====================  ==================  ==========================
interface                 reads (after memo)     flight              bad entry
========================  =====================  ==================  ==========================
fcache                    disk, redis (fail      none (or the lease  repaired, a miss
                          open), backfilled      with SINGLE_FLIGHT)
dcache, local             disk                   file lock           raises ValueDecodingError
dcache, global            redis (retried)        Redis lease         raises ValueDecodingError
dcache, strict=cached     the same               inserts forbidden,  misses raise
dcache, strict=           none                   (never computes)    misses raise
prepopulated
========================  =====================  ==================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import exceptions
from .breaker import CircuitBreaker
from .config import Settings
from .flight import FailOpenFlight, FileFlight, Flight, NoFlight, Writes
from .layers.base import Layer, Space
from .layers.guards import FailOpen, Retrying
from .lease_flight import LeaseFlight
from .retry import Retrier
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .runtime import Runtime


@dataclass(frozen=True, slots=True)
class Policy:
    """How one interface reads, computes and stores; data, built by :func:`build`."""

    reads: tuple[Layer[bytes], ...]  # consulted after the memo, in order
    backfill: bool  # a hit in a lower read layer is copied to the ones above it
    flight: Flight  # computes a miss and stores it; stores inserts
    fail_open: bool  # bad entries and oversize results degrade to local (fcache), or raise
    strict: str | None  # the strict mode: misses raise and inserts are forbidden
    remote: FailOpen | None = None  # fcache's view of Redis, for batched reads


def validate(settings: Settings, space: Space) -> None:
    """Raise the configuration error this interface cannot start with."""
    if space != "dcache":
        return
    if settings.deterministic_problem is not None:
        raise settings.deterministic_problem
    if not settings.deterministic:
        raise exceptions.DeterministicCachingDisabledError(
            "dcache needs REDIS_CACHE_DETERMINISTIC=1 (it is 0)"
        )


def needs_fitness_check(settings: Settings, space: Space) -> bool:
    """Global determinism must check the server first (unless only the memo is read)."""
    return space == "dcache" and settings.global_determinism and not settings.strict_prepopulated


def unbounded_memo(settings: Settings, space: Space) -> bool:
    """dcache's memo is the record to dump, or the only source in strict prepopulated mode."""
    return space == "dcache" and (settings.strict_prepopulated or settings.dump_at_exit is not None)


def build(settings: Settings, space: Space, runtime: Runtime) -> Policy:
    """The policy of ``space`` under ``settings``, over the layers of ``runtime``."""
    if space == "dcache":
        return _deterministic(settings, runtime)
    return _fast(settings, runtime)


def _fast(settings: Settings, rt: Runtime) -> Policy:
    stats = rt.stats
    disk = FailOpen(rt.disk, stats)
    if rt.redis is None:
        local = NoFlight(Writes((disk,), rt.backfill, stats))
        return Policy((disk,), backfill=True, flight=local, fail_open=True, strict=None)
    breaker = CircuitBreaker(settings.breaker_cooldown, settings.breaker_max_cooldown)
    remote = FailOpen(rt.redis, stats, breaker=breaker, repairs=not settings.read_only)
    writes: tuple[Layer[bytes], ...] = (remote, disk) if settings.remote_writable else (disk,)
    no_flight = NoFlight(Writes(writes, rt.backfill, stats))
    flight: Flight = no_flight
    if settings.single_flight and settings.remote_writable:
        lease = LeaseFlight(
            rt.redis,
            Retrier(0.0, stats=StatsRecorder()),  # a failure is counted once, by remote.note
            stats,
            lock_timeout=settings.lock_timeout,
            lease=settings.lock_lease,
            replicas=settings.min_replicas,
            replica_timeout_ms=rt.redis.replica_timeout_ms,
            ttl_ms=settings.ttl * 1000,
        )
        flight = FailOpenFlight(lease, no_flight, breaker, stats, remote.note)
    reads: tuple[Layer[bytes], ...] = (disk, remote)
    return Policy(reads, backfill=True, flight=flight, fail_open=True, strict=None, remote=remote)


def _deterministic(settings: Settings, rt: Runtime) -> Policy:
    strict = settings.strict if settings.is_strict else None
    flight: Flight
    sync: Layer[bytes]
    if settings.global_determinism:
        redis_layer = rt.redis
        if redis_layer is None:  # config refuses global without a URL; be explicit anyway
            raise exceptions.InvalidDeterministicSettingError(
                "REDIS_CACHE_DETERMINISM", "global", "local (global needs REDIS_CACHE_URL)"
            )
        retrier = Retrier(settings.retry_deadline, stats=rt.stats)
        sync = Retrying(redis_layer, retrier)
        flight = LeaseFlight(
            redis_layer,
            retrier,
            rt.stats,
            lock_timeout=settings.lock_timeout,
            lease=settings.lock_lease,
            replicas=settings.min_replicas,
            replica_timeout_ms=redis_layer.replica_timeout_ms,
        )
    else:
        sync = rt.disk
        flight = FileFlight(rt.disk, settings.lock_timeout, rt.stats)
    reads = () if settings.strict_prepopulated else (sync,)
    return Policy(reads, backfill=False, flight=flight, fail_open=False, strict=strict)
