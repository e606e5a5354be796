"""The three singletons' behaviour: ``record``, ``get``, ``insert``, ``lock``.

A call flows memo → disk → redis. ``FastCache`` tolerates races and fails open;
``DeterministicCache`` gives every caller of a key the first-written result and
fails closed. The shared parts (keys, codecs, the memo fast path) live in
``CacheInterface``; each subclass says where to look up, how to compute a miss
and how to store.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, cast

from . import config, context, dumpfile, exceptions, keys, locks
from .backend import Backend
from .layers import EntryKey, Layer, MemoEntry, Outcome, Space
from .stats import CacheStats

logger = logging.getLogger("redis_cache")

R = TypeVar("R")
Params = tuple[tuple[Any, ...] | list[Any], dict[str, Any]]
Fn = Callable[..., Any]

# Argument types whose == and hash agree with the canonical key: a memo fast-path
# hit on these cannot confuse 1 with True or 1.0 (those take the canonical path).
_FAST_TYPES = frozenset({str, int, bytes, type(None)})


@dataclass(frozen=True, slots=True)
class Hit:
    """A cache hit; ``value`` may itself be ``None``, so a miss is a bare ``None``."""

    value: Any


def callee_name(fn: Fn) -> str:
    """Module-qualified name: the bare ``__name__`` collides across modules."""
    module = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", "builtins")
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


def _fast_key(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    for arg in args:
        if type(arg) not in _FAST_TYPES:
            return None
    return args


class CacheInterface(ABC):
    """What ``fcache`` and ``dcache`` share; subclasses own lookup, miss and store."""

    name = "cache"
    space: Space = "fcache"

    def __init__(self, settings: config.Settings | None = None) -> None:
        self._explicit_settings = settings
        self._backend_: Backend | None = None
        self._backend_lock = threading.Lock()
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._fast_maps: weakref.WeakSet[_FastMap] = weakref.WeakSet()
        _instances.add(self)

    # -- lifecycle -----------------------------------------------------------------

    def _backend(self) -> Backend:
        backend = self._backend_
        if backend is None:
            with self._backend_lock:
                backend = self._backend_
                if backend is None:
                    settings = self._explicit_settings or config.current()
                    self._validate(settings)
                    backend = self._build(settings)
                    self._backend_ = backend
        return backend

    def _validate(self, settings: config.Settings) -> None:  # noqa: B027 - a hook
        """Raise the configuration error this interface cannot work with."""

    def _build(self, settings: config.Settings) -> Backend:
        return Backend(settings, self._stats, self.name)

    def _after_fork_in_child(self) -> None:
        # Locks may have been held by a thread that does not exist in the child.
        self._lock = threading.Lock()
        self._backend_lock = threading.Lock()
        if self._backend_ is not None:
            self._backend_.after_fork_in_child()

    def close(self) -> None:
        """Flush pending backfills and drop connections (tests, orderly shutdown)."""
        backend, self._backend_ = self._backend_, None
        if backend is not None:
            backend.close()
        for fast in list(self._fast_maps):
            fast.clear()

    # -- public API ----------------------------------------------------------------

    def lock(self, timeout: float | None = None) -> AbstractContextManager[None]:
        """The interface's process lock, for callers that group several calls."""
        return locks.acquire_thread_lock(self._lock, timeout, default=self._lock_default())

    def _lock_default(self) -> float:
        try:
            return self._backend().settings.lock_timeout
        except exceptions.CacheError:
            return locks.DEFAULT_TIMEOUT

    def stats(self) -> CacheStats:
        """A snapshot of this process's counters."""
        return self._stats.snapshot()

    def get(
        self,
        fn: Fn,
        params: Params,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Fn | None = None,
        custom_result_decoder: Callable[[Any], Any] | None = None,
    ) -> Hit | None:
        backend = self._backend()
        if not backend.settings.enabled:
            return None
        key = self._key(fn, params, context.isolation_key(ischema), custom_params_encoder)
        entry = self._lookup(backend, key)
        if entry is None:
            return None
        return Hit(custom_result_decoder(entry.value) if custom_result_decoder else entry.value)

    # -- get_many: TEMPORARY (branch torch) ----------------------------------------------
    # A plain loop over get() so that Triton's batched lookup (redis_cache.triton) has the
    # call shape it needs now. The lead replaces this with a one-round-trip version; keep
    # the signature and the result (one Hit or None per params, in order).
    def get_many(
        self,
        fn: Fn,
        params_list: list[Params],
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Fn | None = None,
        custom_result_decoder: Callable[[Any], Any] | None = None,
    ) -> list[Hit | None]:
        """One ``get`` per params, in order (a loop for now; one round trip later)."""
        return [
            self.get(fn, params, ischema, custom_params_encoder, custom_result_decoder)
            for params in params_list
        ]

    # -- end of the temporary get_many -------------------------------------------------

    def insert(  # noqa: PLR0917 - the contract's signature
        self,
        fn: Fn,
        params: Params,
        result: Any,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Fn | None = None,
        custom_result_encoder: Callable[[Any], Any] | None = None,
    ) -> bool:
        backend = self._backend()
        if not backend.settings.enabled:
            return False
        self._check_insert_allowed(backend)
        key = self._key(fn, params, context.isolation_key(ischema), custom_params_encoder)
        stored = custom_result_encoder(result) if custom_result_encoder else result
        blob = self._encode(backend, key, stored)
        return self._store(backend, key, blob, stored)

    def record(
        self,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Fn | None = None,
        custom_result_encoder: Callable[[Any], Any] | None = None,
        custom_result_decoder: Callable[[Any], Any] | None = None,
    ) -> Callable[[Callable[..., R]], Callable[..., R]]:
        if custom_result_encoder is not None and custom_result_decoder is None:
            raise exceptions.CustomResultDecoderRequiredError(
                "custom_result_encoder was given without custom_result_decoder"
            )
        if custom_result_decoder is not None and custom_result_encoder is None:
            raise exceptions.CustomResultEncoderRequiredError(
                "custom_result_decoder was given without custom_result_encoder"
            )

        def decorator(fn: Callable[..., R]) -> Callable[..., R]:
            return self._make_wrapper(
                fn,
                ischema=ischema,
                params_encoder=custom_params_encoder,
                result_encoder=custom_result_encoder,
                result_decoder=custom_result_decoder,
            )

        return decorator

    # -- the record wrapper -----------------------------------------------------------

    def _make_wrapper(
        self,
        fn: Callable[..., R],
        *,
        ischema: context.IsolationSchema | None,
        params_encoder: Fn | None,
        result_encoder: Callable[[Any], Any] | None,
        result_decoder: Callable[[Any], Any] | None,
    ) -> Callable[..., R]:
        keyer = context.IsolationKeyer(ischema)
        fast = _FastMap()  # the wrappers below keep it alive; close() reaches it weakly
        self._fast_maps.add(fast)
        fast_values = fast.values
        varies = keyer.varies
        fast_types = _FAST_TYPES
        stats = self._stats

        def slow(args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
            backend = self._backend()
            if not backend.settings.enabled:
                return fn(*args, **kwargs)
            isolation = keyer()
            key = self._key(fn, (args, kwargs), isolation, params_encoder)
            entry = self._lookup(backend, key)
            if entry is not None:
                value = result_decoder(entry.value) if result_decoder else entry.value
            else:
                value = self._compute(
                    backend, key, lambda: fn(*args, **kwargs), result_encoder, result_decoder
                )
            if not kwargs and _fast_key(args) is not None:
                fast.values[(isolation, args) if varies else args] = value
            return cast(R, value)

        if varies:
            # torch is installed: its runtime settings are part of the key and may change
            # between calls, so the fast path keys on the current isolation key too.
            @wraps(fn)
            def varying_wrapper(*args: Any, **kwargs: Any) -> R:
                if not kwargs:
                    try:
                        value = fast_values[(keyer(), args)]
                    except (KeyError, TypeError):
                        pass
                    else:
                        for arg in args:
                            if type(arg) not in fast_types:
                                break
                        else:
                            stats.memo_hits += 1
                            return value  # type: ignore[no-any-return]
                return slow(args, kwargs)

            return varying_wrapper

        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            if not kwargs:
                try:
                    value = fast_values[args]
                except (KeyError, TypeError):
                    pass
                else:
                    for arg in args:
                        if type(arg) not in fast_types:
                            break
                    else:
                        stats.memo_hits += 1
                        return value  # type: ignore[no-any-return]
            return slow(args, kwargs)

        return wrapper

    # -- shared steps --------------------------------------------------------------

    def _key(self, fn: Fn, params: Params, isolation: str, params_encoder: Fn | None) -> EntryKey:
        callee = callee_name(fn)
        args, kwargs = params
        try:
            payload = (
                params_encoder(*args, **kwargs) if params_encoder else (tuple(args), dict(kwargs))
            )
            # Each interface has a key space of its own: dcache must never adopt an
            # fcache entry (raced, possibly carrying a TTL that lets Redis evict it).
            digest = keys.entry_digest(callee, f"{self.name}/{isolation}", payload)
        except exceptions.KeyEncodingError as exc:
            raise exceptions.CustomParamsEncoderRequiredError(fn, str(exc)) from exc
        return EntryKey(callee, digest, self.space)

    def _encode(self, backend: Backend, key: EntryKey, stored: Any) -> bytes:
        try:
            return backend.codec.encode(key.key_id, stored)
        except exceptions.ValueTooLargeError:
            raise
        except exceptions.ValueEncodingError as exc:
            raise exceptions.CustomResultEncoderRequiredError(
                f"the result of {key.callee} cannot be stored: {exc}"
            ) from exc

    def _check_insert_allowed(self, backend: Backend) -> None:  # noqa: B027 - a hook
        """Strict modes forbid inserts; the fast cache always allows them."""

    def _decode(self, backend: Backend, layer: Layer[bytes], key: EntryKey, blob: bytes) -> Any:
        """Decode a stored envelope; what to do with a bad one is the subclass's policy."""
        try:
            return backend.codec.decode(key.key_id, blob)
        except exceptions.ValueDecodingError as exc:
            return self._bad_entry(backend, layer, key, blob, exc)

    @abstractmethod
    def _bad_entry(
        self,
        backend: Backend,
        layer: Layer[bytes],
        key: EntryKey,
        blob: bytes,
        exc: exceptions.ValueDecodingError,
    ) -> Any: ...

    @abstractmethod
    def _lookup(self, backend: Backend, key: EntryKey) -> MemoEntry | None: ...

    @abstractmethod
    def _compute(
        self,
        backend: Backend,
        key: EntryKey,
        call: Callable[[], Any],
        result_encoder: Callable[[Any], Any] | None,
        result_decoder: Callable[[Any], Any] | None,
    ) -> Any: ...

    @abstractmethod
    def _store(self, backend: Backend, key: EntryKey, blob: bytes, stored: Any) -> bool: ...


class _FastMap:
    """Per-decorated-function memo index on raw arguments (weak-referenceable)."""

    __slots__ = ("__weakref__", "values")

    def __init__(self) -> None:
        self.values: dict[tuple[Any, ...], Any] = {}

    def clear(self) -> None:
        self.values.clear()


_MISS = object()


class FastCache(CacheInterface):
    """memo → disk → redis; races tolerated; a sick remote degrades to the local layers."""

    name = "fcache"

    def _bad_entry(
        self,
        backend: Backend,
        layer: Layer[bytes],
        key: EntryKey,
        blob: bytes,
        exc: exceptions.ValueDecodingError,
    ) -> Any:
        backend.note_bad_entry(layer, key, exc)
        if isinstance(exc, exceptions.CorruptEntryError):
            layer.discard(key, blob)
        return _MISS

    def _lookup(self, backend: Backend, key: EntryKey) -> MemoEntry | None:
        entry = backend.memo.get(key)
        if entry is not None:
            self._stats.memo_hits += 1
            return entry
        try:
            blob = backend.disk.get(key)
        except exceptions.DiskLayerError as exc:
            backend.note_disk_error(exc)
            blob = None
        if blob is not None:
            value = self._decode(backend, backend.disk, key, blob)
            if value is not _MISS:
                self._stats.disk_hits += 1
                return backend.remember(key, value, blob)
        remote = backend.fail_open_remote
        if remote is not None:
            blob = remote.get(key)
            if blob is not None:
                value = self._decode(backend, remote, key, blob)
                if value is not _MISS:
                    self._stats.remote_hits += 1
                    backend.backfill_disk(key, blob)
                    return backend.remember(key, value, blob)
        self._stats.misses += 1
        return None

    def _compute(
        self,
        backend: Backend,
        key: EntryKey,
        call: Callable[[], Any],
        result_encoder: Callable[[Any], Any] | None,
        result_decoder: Callable[[Any], Any] | None,
    ) -> Any:
        settings = backend.settings
        if (
            settings.single_flight
            and backend.fail_open_remote is not None
            and not settings.read_only
        ):
            return self._compute_single_flight(backend, key, call, result_encoder, result_decoder)
        result = call()
        self._stats.computations += 1
        stored = result_encoder(result) if result_encoder else result
        blob = self._encode(backend, key, stored)
        if not self._store(backend, key, blob, stored):
            # Below us sits an entry we lost to or cannot read (another fleet's secret):
            # keep our own result for this process rather than recompute on every call.
            backend.remember(key, stored, blob)
        return result_decoder(stored) if result_decoder else result

    def _compute_single_flight(
        self,
        backend: Backend,
        key: EntryKey,
        call: Callable[[], Any],
        result_encoder: Callable[[Any], Any] | None,
        result_decoder: Callable[[Any], Any] | None,
    ) -> Any:
        """Opt-in: one computation per key fleet-wide while Redis is healthy; fail open if not."""
        computed: list[Any] = []

        def compute_stored() -> Any:
            result = call()
            self._stats.computations += 1
            stored = result_encoder(result) if result_encoder else result
            computed.append(stored)
            return stored

        remote = backend.fail_open_remote
        if remote is not None:
            blob = remote.single_flight(key, lambda: self._encode(backend, key, compute_stored()))
            if blob is not None:
                value = self._decode(backend, remote, key, blob)
                if value is not _MISS:
                    backend.backfill_disk(key, blob)
                    entry = backend.remember(key, value, blob)
                    return result_decoder(entry.value) if result_decoder else entry.value
        # Redis failed, or its entry is unusable here: serve our own result locally.
        stored = computed[0] if computed else compute_stored()
        blob = self._encode(backend, key, stored)
        self._store_locally(backend, key, blob, stored)
        return result_decoder(stored) if result_decoder else stored

    def _store_locally(self, backend: Backend, key: EntryKey, blob: bytes, stored: Any) -> None:
        try:
            backend.disk.insert(key, blob)
        except exceptions.DiskLayerError as exc:
            backend.note_disk_error(exc)
        backend.remember(key, stored, blob)

    def _store(self, backend: Backend, key: EntryKey, blob: bytes, stored: Any) -> bool:
        remote = backend.fail_open_remote
        accepted_remotely: bool | None = None
        if remote is not None and not backend.settings.read_only:
            outcome = remote.insert(key, blob)
            if outcome is not Outcome.UNAVAILABLE:
                accepted_remotely = outcome is Outcome.WRITTEN
        if accepted_remotely is False:
            # Another machine won: its value arrives by the next lookup's backfill.
            self._stats.insert_conflicts += 1
            return False
        if accepted_remotely:
            # Redis holds it for every machine; this machine's disk copy is an
            # accelerator and is written off the caller's path.
            backend.backfill_disk(key, blob)
            inserted = True
        else:
            try:
                inserted = backend.disk.insert(key, blob) is Outcome.WRITTEN
            except exceptions.DiskLayerError as exc:
                backend.note_disk_error(exc)
                inserted = False
        if inserted:
            backend.memo.insert(key, MemoEntry(stored, blob, key.callee))
        result = accepted_remotely if accepted_remotely is not None else inserted
        if result:
            self._stats.inserts += 1
        else:
            self._stats.insert_conflicts += 1
        return result


class DeterministicCache(CacheInterface):
    """One result per key for every caller sharing the synchronization layer."""

    name = "dcache"
    space: Space = "dcache"

    def _validate(self, settings: config.Settings) -> None:
        if settings.deterministic_problem is not None:
            raise settings.deterministic_problem
        if not settings.deterministic:
            raise exceptions.DeterministicCachingDisabledError(
                "dcache needs REDIS_CACHE_DETERMINISTIC=1 (it is 0)"
            )

    def _build(self, settings: config.Settings) -> Backend:
        backend = Backend(settings, self._stats, self.name)
        try:
            if settings.determinism == "global" and settings.strict != "prepopulated":
                backend.require_strong_consistency()
            if settings.prepopulate is not None:
                self._prepopulate(backend, settings.prepopulate)
        except BaseException:
            backend.close()  # its client and publisher thread; the next call builds anew
            raise
        if settings.dump_at_exit is not None:
            _dump_at_exit(self, settings.dump_at_exit)
        return backend

    def _prepopulate(self, backend: Backend, path: Path) -> None:
        loaded = 0
        for record in dumpfile.read(path):
            if record.space != "dcache":
                continue  # a dump of a whole namespace may carry fcache entries too
            key = EntryKey(record.callee, record.digest, "dcache")
            try:
                value = backend.codec.decode(key.key_id, record.blob)
            except exceptions.ValueDecodingError as exc:
                raise exceptions.ValueDecodingError(
                    f"entry {record.callee}/{record.digest} of {path} cannot be decoded: {exc}"
                ) from exc
            entry = MemoEntry(value, record.blob, record.callee)
            loaded += backend.memo.insert(key, entry) is Outcome.WRITTEN
        logger.info("prepopulated dcache memo with %d entries from %s", loaded, path)

    def dump(self, path: Path | str) -> int:
        """Write the memo to ``path``, merged with an existing dump there.

        Equal values for one key merge; different values raise
        :class:`DeterministicCachingIMCDumpConflictError` and write nothing.
        """
        backend = self._backend()
        path = Path(path)
        # Processes dumping to one path at exit would otherwise drop each other's additions.
        flock = locks.file_lock(path.with_name(f".{path.name}.lock"))
        with locks.acquire_file_lock(flock, backend.settings.lock_timeout):
            return self._merge_into(backend, path)

    def _merge_into(self, backend: Backend, path: Path) -> int:
        merged: dict[str, dumpfile.DumpRecord] = {}
        if path.exists():
            for record in dumpfile.read(path):
                merged[record.digest] = record
        for digest, entry in backend.memo.items():
            previous = merged.get(digest)
            if previous is None:
                merged[digest] = dumpfile.DumpRecord(entry.callee, digest, entry.blob, "dcache")
                continue
            if previous.blob == entry.blob:
                continue
            key = EntryKey(entry.callee, digest, "dcache")
            try:
                same = _same_value(backend.codec.decode(key.key_id, previous.blob), entry.value)
            except exceptions.ValueDecodingError:
                same = False
            if not same:
                raise exceptions.DeterministicCachingIMCDumpConflictError(
                    f"dump {path} holds a different value for {entry.callee}/{digest}"
                )
        return dumpfile.write(path, merged.values())

    def _check_insert_allowed(self, backend: Backend) -> None:
        if backend.settings.strict != "off":
            raise exceptions.StrictDeterministicCachingInsertionError(
                f"REDIS_CACHE_STRICT={backend.settings.strict} forbids inserts"
            )

    def _bad_entry(
        self,
        backend: Backend,
        layer: Layer[bytes],
        key: EntryKey,
        blob: bytes,
        exc: exceptions.ValueDecodingError,
    ) -> Any:
        backend.note_bad_entry(layer, key, exc)
        named = exceptions.ValueDecodingError.__new__(type(exc))
        Exception.__init__(named, f"{layer.name} entry {key.callee}/{key.digest}: {exc}")
        raise named from exc

    def _lookup(self, backend: Backend, key: EntryKey) -> MemoEntry | None:
        entry = backend.memo.get(key)
        if entry is not None:
            self._stats.memo_hits += 1
            return entry
        strict = backend.settings.strict
        if strict != "prepopulated":
            sync = backend.sync_layer
            blob = sync.get(key)
            if blob is not None:
                value = self._decode(backend, sync, key, blob)
                self._count_sync_hit(backend)
                return backend.remember(key, value, blob)
        if strict != "off":
            raise exceptions.StrictDeterministicCachingKeyNotFoundError(
                f"REDIS_CACHE_STRICT={strict}: no entry for {key.callee}/{key.digest}"
            )
        self._stats.misses += 1
        return None

    def _count_sync_hit(self, backend: Backend) -> None:
        if backend.sync_layer is backend.disk:
            self._stats.disk_hits += 1
        else:
            self._stats.remote_hits += 1

    def _compute(
        self,
        backend: Backend,
        key: EntryKey,
        call: Callable[[], Any],
        result_encoder: Callable[[Any], Any] | None,
        result_decoder: Callable[[Any], Any] | None,
    ) -> Any:
        def compute_blob() -> bytes:
            result = call()
            self._stats.computations += 1
            stored = result_encoder(result) if result_encoder else result
            return self._encode(backend, key, stored)

        blob = backend.single_flight(key, compute_blob)
        value = self._decode(backend, backend.sync_layer, key, blob)
        entry = backend.remember(key, value, blob)
        return result_decoder(entry.value) if result_decoder else entry.value

    def _store(self, backend: Backend, key: EntryKey, blob: bytes, stored: Any) -> bool:
        inserted = backend.sync_layer.insert(key, blob) is Outcome.WRITTEN
        if inserted:
            backend.memo.insert(key, MemoEntry(stored, blob, key.callee))
            self._stats.inserts += 1
        else:
            self._stats.insert_conflicts += 1
        return inserted


def _same_value(a: object, b: object) -> bool:
    """Equal and of the same type all the way down (1 and True are different results)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _dump_at_exit(cache: DeterministicCache, path: Path) -> None:
    def dump() -> None:
        try:
            count = cache.dump(path)
            logger.info("dumped %d dcache entries to %s", count, path)
        except exceptions.CacheError:
            logger.exception("dumping the dcache memo to %s failed", path)

    atexit.register(dump)


_instances: weakref.WeakSet[CacheInterface] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for cache in list(_instances):
        cache._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_all_after_fork)
