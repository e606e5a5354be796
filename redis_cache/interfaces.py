"""The three singletons' behaviour: ``record``, ``get``, ``insert``, ``lock``.

Every call runs the same path, whichever interface it is (the differences are
data, in :mod:`redis_cache.policy`)::

    memo ──hit──▶ value
     │ miss
    policy.reads (in order) ──hit──▶ decode, backfill the layers above, memoize
     │ miss (strict mode: raise)
    policy.flight.run(compute) ──▶ the entry every caller gets, memoized

``record`` wrappers add a fast index on the raw arguments in front of the memo.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import context, exceptions, forksafe, recorder
from .fastkeys import fast_key
from .hooks import Event, emit
from .hooks import active as _hooks
from .layers.base import EntryKey, Layer, Outcome, Space
from .stats import CacheStats, StatsRecorder

if TYPE_CHECKING:  # imported on first use: `import redis_cache` stays cheap
    from pathlib import Path

    from . import callees, config
    from .flight import Landed
    from .layers.memo import MemoEntry
    from .runtime import Runtime

logger = logging.getLogger("redis_cache")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
Params = tuple[tuple[Any, ...] | list[Any], dict[str, Any]]
Encoder = Callable[[Any], Any]

_BAD = object()  # a stored entry that could not be decoded (fcache: repaired, missed)


class Hit(Generic[T]):
    """A cache hit; ``value`` may itself be ``None``, so a miss is a bare ``None``.

    Immutable, compared and hashed by its value. Written out rather than a frozen
    dataclass so that ``import redis_cache`` does not load :mod:`dataclasses`, which
    imports ``inspect`` (~8 ms of a worker's start).
    """

    __slots__ = ("value",)
    __match_args__ = ("value",)
    value: T

    def __init__(self, value: T) -> None:
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Hit is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Hit is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.value,) == (other.value,)

    def __hash__(self) -> int:
        return hash((self.value,))

    def __repr__(self) -> str:
        return f"Hit(value={self.value!r})"

    def __reduce__(self) -> tuple[type[Hit[T]], tuple[T]]:
        return (Hit, (self.value,))


class CacheInterface:
    """One interface (fcache or dcache): its settings, its runtime, its counters."""

    space: Space = "fcache"

    def __init__(self, settings: config.Settings | None = None) -> None:
        self._explicit_settings = settings
        self._runtime_: Runtime | None = None
        self._runtime_lock = threading.Lock()
        self._lock = threading.Lock()
        self._stats = StatsRecorder()
        self._fast = recorder.FastIndexes()  # record wrappers', get's and insert's
        self._default_keyer_: context.IsolationKeyer | None = None
        self._dump_registered = False
        forksafe.register(self)

    @property
    def name(self) -> str:
        return self.space

    def _default_keyer(self) -> context.IsolationKeyer:
        """The default schema's keyer, built on first use (it looks for torch)."""
        keyer = self._default_keyer_
        if keyer is None:
            keyer = self._default_keyer_ = context.IsolationKeyer(None)
        return keyer

    # -- lifecycle -----------------------------------------------------------------

    def _runtime(self) -> Runtime:
        runtime = self._runtime_
        if runtime is None:
            with self._runtime_lock:
                runtime = self._runtime_
                if runtime is None:
                    from . import config  # noqa: PLC0415
                    from .runtime import Runtime  # noqa: PLC0415

                    settings = self._explicit_settings or config.current()
                    runtime = Runtime(settings, self.space, self._stats)
                    if settings.dump_at_exit is not None and not self._dump_registered:
                        self._dump_registered = True
                        atexit.register(self._dump_at_exit)
                    self._runtime_ = runtime
        return runtime

    def after_fork_in_child(self) -> None:
        # Locks may have been held by a thread that does not exist in the child.
        self._lock = threading.Lock()
        self._runtime_lock = threading.Lock()

    def close(self) -> None:
        """Flush pending backfills and drop connections (tests, orderly shutdown).

        With ``REDIS_CACHE_DUMP`` set, what this process memoized is dumped first.
        """
        runtime, self._runtime_ = self._runtime_, None
        if runtime is not None:
            try:
                if runtime.settings.dump_at_exit is not None:
                    self._dump(runtime, runtime.settings.dump_at_exit)
            finally:
                runtime.close()
        self._fast.clear()

    def _dump_at_exit(self) -> None:
        runtime = self._runtime_
        if runtime is not None and runtime.settings.dump_at_exit is not None:
            self._dump(runtime, runtime.settings.dump_at_exit)

    @staticmethod
    def _dump(runtime: Runtime, path: Path) -> None:
        try:
            count = runtime.dump(path)
            logger.info("dumped %d %s entries to %s", count, runtime.space, path)
        except exceptions.CacheError:
            logger.exception("dumping the %s memo to %s failed", runtime.space, path)

    # -- public API ----------------------------------------------------------------

    def lock(self, timeout: float | None = None) -> AbstractContextManager[None]:
        """The interface's process lock, for callers that group several calls.

        ``timeout``: ``None`` waits ``REDIS_CACHE_LOCK_TIMEOUT``, ``-1`` forever, ``0``
        not at all; raises :class:`LockTimeoutError` when it cannot be had in time.
        """
        from . import locks  # noqa: PLC0415

        return locks.acquire_thread_lock(self._lock, timeout, default=self._lock_default())

    def _lock_default(self) -> float:
        try:
            return self._runtime().settings.lock_timeout
        except exceptions.CacheError:
            from . import locks  # noqa: PLC0415

            return locks.DEFAULT_TIMEOUT

    def stats(self) -> CacheStats:
        """A snapshot of this process's counters."""
        return self._stats.snapshot()

    def get(
        self,
        fn: Callable[..., Any],
        params: Params,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Callable[..., Any] | None = None,
        custom_result_decoder: Encoder | None = None,
    ) -> Hit[Any] | None:
        """The stored result of ``fn(*args, **kwargs)`` as a :class:`Hit`, or ``None``.

        ``params`` is ``(args, kwargs)``. Never computes. Raises
        :class:`CustomParamsEncoderRequiredError` for parameters that have no
        canonical key (pass ``custom_params_encoder``).
        """
        runtime = self._runtime_ or self._runtime()
        if not runtime.settings.enabled:
            return None
        index = fk = ik = None
        if ischema is None and custom_params_encoder is None:
            keyer = self._default_keyer_ or self._default_keyer()
            fingerprint = keyer.fingerprint() if keyer.varies else None
            index = self._fast.by_fn.get(id(fn))
            if index is None or index.fn() is not fn:  # type: ignore[misc]
                index = self._fast.shared(fn)
            args, kwargs = params
            fk = fast_key(args if type(args) is tuple else tuple(args), kwargs)
            if fk is not None:
                ik = fk if fingerprint is None else (fingerprint, fk)
                entry = index.entries.get(ik)
                if entry is not None:  # inlined: this is the hot path of get
                    entry.used = True
                    self._stats.callee(entry.callee).memo_hits += 1
                    if _hooks:
                        emit(Event("hit", self.space, entry.callee, "memo"))
                    value, decode = entry.value, custom_result_decoder
                    return Hit(value if decode is None else decode(value))
            isolation = keyer.key(fingerprint)  # one reading of the settings per call
        else:
            isolation = context.isolation_key(ischema)
        callee = _callee(fn, custom_params_encoder)
        key = self._key(fn, callee, params, isolation, custom_params_encoder)
        entry = self._lookup(runtime, key)
        if entry is None:
            return None
        if index is not None and fk is not None:
            recorder.index_entry(runtime, index, entry, fk, ik, params)
        return Hit(_decoded(entry, custom_result_decoder))

    def get_many(
        self,
        fn: Callable[..., Any],
        many: Sequence[Params],
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Callable[..., Any] | None = None,
        custom_result_decoder: Encoder | None = None,
    ) -> list[Hit[Any] | None]:
        """``get`` for many parameter sets, one round trip per layer for all of them."""
        runtime = self._runtime()
        if not runtime.settings.enabled:
            return [None] * len(many)
        callee = _callee(fn, custom_params_encoder)
        isolation = context.isolation_key(ischema)
        entry_keys = [self._key(fn, callee, p, isolation, custom_params_encoder) for p in many]
        entries = self._lookup_many(runtime, entry_keys)
        decode = custom_result_decoder
        return [None if e is None else Hit(_decoded(e, decode)) for e in entries]

    def insert(  # noqa: PLR0917 - the contract's signature
        self,
        fn: Callable[..., Any],
        params: Params,
        result: Any,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Callable[..., Any] | None = None,
        custom_result_encoder: Encoder | None = None,
    ) -> bool:
        """Store ``result`` as the entry of ``fn(*args, **kwargs)``; first writer wins.

        Returns ``False`` when an entry already existed (it is never overwritten) or
        nothing could store it. Strict deterministic modes forbid inserts.
        """
        runtime = self._runtime()
        if not runtime.settings.enabled:
            return False
        if runtime.policy.strict is not None:
            raise exceptions.StrictDeterministicCachingInsertionError(
                f"REDIS_CACHE_STRICT={runtime.policy.strict} forbids inserts"
            )
        default = ischema is None and custom_params_encoder is None
        keyer = self._default_keyer()
        fingerprint = keyer.fingerprint() if default and keyer.varies else None
        isolation = keyer.key(fingerprint) if default else context.isolation_key(ischema)
        callee = _callee(fn, custom_params_encoder)
        key = self._key(fn, callee, params, isolation, custom_params_encoder)
        stored = custom_result_encoder(result) if custom_result_encoder else result
        from .flight import Computed  # noqa: PLC0415

        computed = Computed(stored, self._encode(runtime, key, stored))
        landed = runtime.policy.flight.insert(key, computed)
        if landed.outcome is Outcome.EXISTED:
            return False
        entry = self._settle(runtime, key, landed)
        if default:
            args, kwargs = params
            args = args if type(args) is tuple else tuple(args)
            fk = fast_key(args, kwargs)
            if fk is not None:
                ik = fk if fingerprint is None else (fingerprint, fk)
                recorder.index_entry(runtime, self._fast.shared(fn), entry, fk, ik, (args, kwargs))
        return landed.outcome is Outcome.WRITTEN

    def record(
        self,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Callable[..., Any] | None = None,
        custom_result_encoder: Encoder | None = None,
        custom_result_decoder: Encoder | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function so that each distinct call computes once and is shared.

        A call returns what every later hit returns: with custom codecs,
        ``custom_result_decoder(custom_result_encoder(result))``. An encoder without
        its decoder (or the reverse) raises at decoration time.
        """
        if custom_result_encoder is not None and custom_result_decoder is None:
            raise exceptions.CustomResultDecoderRequiredError(
                "custom_result_encoder was given without custom_result_decoder"
            )
        if custom_result_decoder is not None and custom_result_encoder is None:
            raise exceptions.CustomResultEncoderRequiredError(
                "custom_result_decoder was given without custom_result_encoder"
            )

        def decorator(fn: Callable[P, R]) -> Callable[P, R]:
            # Identity errors (async, unencodable bound state) and the __main__ warning
            # come here, at decoration, and the name is computed once.
            callee = _callee(fn, custom_params_encoder)
            return recorder.wrap(
                self, fn, callee, ischema, custom_params_encoder, custom_result_encoder,
                custom_result_decoder,
            )  # fmt: skip

        return decorator

    def entry_key(
        self,
        fn: Callable[..., Any],
        params: Params,
        ischema: context.IsolationSchema | None = None,
        custom_params_encoder: Callable[..., Any] | None = None,
    ) -> EntryKey:
        """The entry a call would use (where it lives in each layer), for tools and tests."""
        callee = _callee(fn, custom_params_encoder)
        return self._key(fn, callee, params, context.isolation_key(ischema),
                         custom_params_encoder)  # fmt: skip

    # -- the record wrapper -----------------------------------------------------------

    # -- the shared steps ------------------------------------------------------------

    def _key(
        self,
        fn: Callable[..., Any],
        callee: callees.Callee,
        params: Params,
        isolation: str,
        params_encoder: Callable[..., Any] | None,
    ) -> EntryKey:
        args, kwargs = params
        payload = params_encoder(*args, **kwargs) if params_encoder else (tuple(args), kwargs)
        return self._key_of(fn, callee, isolation, payload)

    def _key_of(self, fn: Any, callee: callees.Callee, isolation: str, payload: Any) -> EntryKey:
        try:
            # Each interface has a key space of its own: dcache must never adopt an
            # fcache entry (raced, possibly carrying a TTL that lets Redis evict it).
            space = f"{self.space}/{isolation}"
            digest = _digest(callee.name, space, callee.payload(payload))
        except exceptions.KeyEncodingError as exc:
            raise exceptions.CustomParamsEncoderRequiredError(fn, str(exc)) from exc
        return EntryKey(callee.name, digest, self.space)

    def _lookup(self, runtime: Runtime, key: EntryKey) -> MemoEntry | None:
        entry = runtime.memo.get(key)
        if entry is not None:
            self._count(key.callee, "memo")
            return entry
        runtime.touch()
        policy = runtime.policy
        for index, layer in enumerate(policy.reads):
            try:
                blob = layer.get(key)
            except exceptions.ValueDecodingError as exc:  # not an entry at all (disk)
                self._bad_entry(runtime, layer, key, b"", exc)
                continue
            entry = None if blob is None else self._found(runtime, index, key, blob)
            if entry is not None:
                return entry
        self._missed(runtime, key)
        return None

    def _found(self, runtime: Runtime, index: int, key: EntryKey, blob: bytes) -> MemoEntry | None:
        """``blob``, read from the ``index``-th read layer: decoded, counted, backfilled
        into the layers above and memoized; ``None`` when it is not a usable entry."""
        policy = runtime.policy
        layer = policy.reads[index]
        value = self._decode(runtime, layer, key, blob)
        if value is _BAD:
            return None
        self._count(key.callee, layer.name)
        if policy.backfill:
            for upper in policy.reads[:index]:
                runtime.backfill(upper, key, blob)
        return runtime.remember(key, value, len(blob))

    def _lookup_many(
        self, runtime: Runtime, entry_keys: Sequence[EntryKey]
    ) -> list[MemoEntry | None]:
        found: list[MemoEntry | None] = [runtime.memo.get(key) for key in entry_keys]
        for key, entry in zip(entry_keys, found, strict=True):
            if entry is not None:
                self._count(key.callee, "memo")
        runtime.touch()
        for index, layer in enumerate(runtime.policy.reads):
            wanted = [i for i, e in enumerate(found) if e is None]
            if not wanted:
                break
            blobs = layer.get_many([entry_keys[i] for i in wanted])
            for i, blob in zip(wanted, blobs, strict=True):
                if blob is not None:
                    found[i] = self._found(runtime, index, entry_keys[i], blob)
        for i, entry in enumerate(found):
            if entry is None:
                self._missed(runtime, entry_keys[i])
        return found

    def _missed(self, runtime: Runtime, key: EntryKey) -> None:
        strict = runtime.policy.strict
        if strict is not None:
            raise exceptions.StrictDeterministicCachingKeyNotFoundError(
                f"REDIS_CACHE_STRICT={strict}: no entry for {key.callee}/{key.digest}"
            )
        self._stats.callee(key.callee).misses += 1
        if _hooks:
            emit(Event("miss", self.space, key.callee))

    def _count(self, callee: str, layer: str) -> None:
        """A hit served by ``layer`` (memo, disk or redis)."""
        counters = self._stats.callee(callee)
        if layer == "memo":
            counters.memo_hits += 1
        elif layer == "disk":
            counters.disk_hits += 1
        else:
            counters.remote_hits += 1
        if _hooks:
            emit(Event("hit", self.space, callee, layer))

    def _decode(self, runtime: Runtime, layer: Layer[bytes], key: EntryKey, blob: bytes) -> Any:
        try:
            return runtime.codec.decode(key.key_id, blob)
        except exceptions.ValueDecodingError as exc:
            return self._bad_entry(runtime, layer, key, blob, exc)

    def _bad_entry(
        self,
        runtime: Runtime,
        layer: Layer[bytes],
        key: EntryKey,
        blob: bytes,
        exc: exceptions.ValueDecodingError,
    ) -> Any:
        """fcache repairs a corrupt entry and misses; dcache raises naming the entry."""
        runtime.note_bad_entry(layer, key, exc)
        if not runtime.policy.fail_open:
            raise exc.located(f"{layer.name} entry {key.callee}/{key.digest}") from exc
        if isinstance(exc, exceptions.CorruptEntryError):
            layer.discard(key, blob)  # never an entry another fleet's secret made
        return _BAD

    def _encode(self, runtime: Runtime, key: EntryKey, stored: Any) -> bytes | None:
        """The envelope of ``stored``; ``None`` when fcache keeps it in this process only."""
        try:
            return runtime.codec.encode(key.key_id, stored)
        except exceptions.ValueTooLargeError as exc:
            if not runtime.policy.fail_open:
                raise
            runtime.note_oversize(key, exc)
            return None
        except exceptions.ValueEncodingError as exc:
            raise exceptions.CustomResultEncoderRequiredError(
                f"the result of {key.callee} cannot be stored: {exc}"
            ) from exc

    def _compute(
        self, runtime: Runtime, key: EntryKey, call: Callable[[], Any], encode: Encoder | None
    ) -> MemoEntry:
        from .flight import Computed  # noqa: PLC0415

        def compute() -> Computed:
            started = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - started
            counters = self._stats.callee(key.callee)
            counters.computations += 1
            counters.compute_seconds += seconds
            if _hooks:
                emit(Event("compute", self.space, key.callee, seconds=seconds))
            stored = result if encode is None else encode(result)
            return Computed(stored, self._encode(runtime, key, stored))

        return self._settle(runtime, key, runtime.policy.flight.run(key, compute))

    def _settle(self, runtime: Runtime, key: EntryKey, landed: Landed) -> MemoEntry:
        """Memoize the value every caller of this process returns."""
        computed = landed.computed
        if computed is not None and (landed.ours or landed.blob is None):
            from .codec import MAX_RAW_LENGTH  # noqa: PLC0415

            size = len(computed.blob) if computed.blob is not None else MAX_RAW_LENGTH + 1
            return runtime.remember(key, computed.value, size)
        assert landed.blob is not None
        layer = runtime.policy.reads[-1] if runtime.policy.reads else _NoLayer()
        value = self._decode(runtime, layer, key, landed.blob)
        if value is _BAD:  # fcache met another fleet's or a broken entry: keep ours here
            if computed is None:
                raise exceptions.CorruptEntryError(f"entry {key.callee}/{key.digest} is unusable")
            return runtime.remember(key, computed.value, len(landed.blob))
        return runtime.remember(key, value, len(landed.blob))


def _callee(fn: Callable[..., Any], params_encoder: Callable[..., Any] | None) -> callees.Callee:
    from . import callees  # noqa: PLC0415 - on first use: `import redis_cache` stays cheap

    return callees.callee_of(fn, has_params_encoder=params_encoder is not None)


def _entry_digest(callee: str, space: str, payload: object) -> str:
    """keys.entry_digest, imported on the first call (then called directly)."""
    global _digest
    from . import keys  # noqa: PLC0415

    _digest = keys.entry_digest
    return _digest(callee, space, payload)


_digest: Callable[[str, str, object], str] = _entry_digest


def _decoded(entry: MemoEntry, decode: Encoder | None) -> Any:
    return entry.value if decode is None else decode(entry.value)


class _NoLayer(Layer[bytes]):
    """Names the flight's storage in messages when no read layer is configured."""

    name = "sync"

    def get(self, key: EntryKey) -> bytes | None:
        return None

    def insert(self, key: EntryKey, item: bytes) -> Outcome:
        return Outcome.UNAVAILABLE

    def discard(self, key: EntryKey, expected: bytes) -> bool:
        return False


class FastCache(CacheInterface):
    """memo → disk → redis; races tolerated; a sick remote degrades to the local layers."""

    space: Space = "fcache"


class DeterministicCache(CacheInterface):
    """One result per key for every caller sharing the synchronization layer."""

    space: Space = "dcache"

    def dump(self, path: Path | str) -> int:
        """Write the memo to ``path``, merged with an existing dump there.

        Equal values for one key merge; different values raise
        :class:`DeterministicCachingIMCDumpConflictError` and write nothing.
        """
        from pathlib import Path  # noqa: PLC0415

        return self._runtime().dump(Path(path))
