"""torch 2.13's ``Memoizer`` / ``PersistentMemoizer`` call shapes, on redis_cache's layers.

torch 2.13's caching module (``torch._inductor.runtime.caching``) replaced the
``fcache``/``dcache``/``icache`` singletons with two memoizers; ``fx_passes/pad_mm.py``
uses them. This module serves the same calls, so code written for torch's module
switches by changing its import:

- ``record(custom_params_encoder=None, custom_result_encoder=None)``: call, store,
  return the function's own result.
- ``replay(custom_params_encoder=None, custom_result_decoder=None)``: return the stored
  result (decoded) without calling; ``KeyError`` on a miss.
- ``memoize(...)``: replay, else record.
- Result codecs are three-step factories, ``factory(fn)(*args, **kwargs)(value)``; an
  encoder may return a :class:`DeferredRecording` that is stored when finalized.
- ``Memoizer(sub_key=None)`` is in-process; ``PersistentMemoizer(sub_dir=None)`` adds
  the disk layer and, with ``REDIS_CACHE_URL``, Redis: it shares across machines.

As in torch, an entry's key is its parameters (encoded) within one memoizer: the
function is not part of it, so ``record`` on one function and ``replay`` on another
with the same parameters meet. Unlike torch, parameters are keyed canonically (exact
builtin types, nested) rather than pickled: anything else needs a
``custom_params_encoder`` (:class:`CustomParamsEncoderRequiredError`). A persistent
memoizer keys on the compile context too (torch, triton, runtime, accelerator), since
its entries now leave the machine that computed them. See docs/migrating.md.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from . import config, exceptions
from .blobs import entry_name
from .context import IsolationSchema
from .interfaces import FastCache

_P = ParamSpec("_P")
_R = TypeVar("_R")
_EncodedR = TypeVar("_EncodedR")
_EncodedR_co = TypeVar("_EncodedR_co", covariant=True)
_EncodedR_contra = TypeVar("_EncodedR_contra", contravariant=True)

# Persistent entries leave the machine: they depend on torch, triton and the hardware
# that produced them, not on per-call settings (re-reading those costs every call).
PERSISTENT_ISOLATION = IsolationSchema(runtime_context=False, compile_context=True)


@dataclass
class CacheEntry:
    """A stored call: its encoded parameters (for inspection) and encoded result."""

    encoded_params: object
    encoded_result: object


@dataclass
class InterimResult(Generic[_R]):
    """What a pending :class:`DeferredRecording` offers callers meanwhile (may be ``None``)."""

    value: _R


@dataclass
class DeferredRecording(Generic[_R, _EncodedR]):
    """Returned by a result encoder whose encoded form is not ready yet.

    The memoizer registers a callback and stores the entry when ``finalize(encoded)``
    is called, from any thread, before or after registration. ``make_interim_result``
    (optional) answers calls for the same key while the recording is pending, instead
    of running the function again. Callbacks run under the lock, in registration
    order: they must not call back into this object.
    """

    _callbacks: list[Callable[[_EncodedR], None]] | None = field(default_factory=list, repr=False)
    _encoded_result: _EncodedR | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    make_interim_result: Callable[[], _R] | None = field(default=None, repr=False)

    def finalize(self, encoded_result: _EncodedR) -> None:
        """Store ``encoded_result`` and run every registered callback with it, once."""
        with self._lock:
            if self._callbacks is None:
                raise RuntimeError("finalize() called multiple times on DeferredRecording")
            callbacks, self._callbacks = self._callbacks, None
            self._encoded_result = encoded_result
            for callback in callbacks:
                callback(encoded_result)

    def register_callback(self, callback: Callable[[_EncodedR], None]) -> None:
        """Run ``callback`` on finalize, or now if that already happened."""
        with self._lock:
            if self._callbacks is None:
                callback(cast(_EncodedR, self._encoded_result))
            else:
                self._callbacks.append(callback)

    def get_interim_result(self) -> InterimResult[_R] | None:
        """``InterimResult(make_interim_result())``, or ``None`` when none was configured."""
        with self._lock:
            if self.make_interim_result is None:
                return None
            return InterimResult(self.make_interim_result())


class ResultEncoderFactory(Protocol[_P, _R, _EncodedR_co]):
    """``factory(fn)(*args, **kwargs)(result) -> encoded`` (or a DeferredRecording).

    ``fn`` is the undecorated function: an encoder may call it without memoization.
    """

    def __call__(
        self, fn: Callable[_P, _R]
    ) -> Callable[_P, Callable[[_R], _EncodedR_co | DeferredRecording[_R, Any]]]: ...


class ResultDecoderFactory(Protocol[_P, _R, _EncodedR_contra]):
    """``factory(fn)(*args, **kwargs)(encoded) -> result``."""

    def __call__(self, fn: Callable[_P, _R]) -> Callable[_P, Callable[[_EncodedR_contra], _R]]: ...


class _Unkeyable(Exception):
    """A parameter is not one of the exact builtin types a key is made of."""


def _frozen(value: object) -> Hashable:
    """A hashable form that keeps types apart (``1``, ``1.0``, ``True``) and ignores order."""
    kind = type(value)
    if value is None or kind in (bool, int, str, bytes):
        return (kind.__name__, value)
    if kind is float:
        return ("float", cast(float, value).hex())  # -0.0 and 0.0 differ, nan equals nan
    if kind is tuple or kind is list:
        return (kind.__name__, tuple(_frozen(v) for v in cast("list[Any]", value)))
    if kind is dict:
        items = cast("dict[Any, Any]", value).items()
        return ("dict", frozenset((_frozen(k), _frozen(v)) for k, v in items))
    if kind is set or kind is frozenset:
        return (kind.__name__, frozenset(_frozen(v) for v in cast("set[Any]", value)))
    raise _Unkeyable(f"a value of type {kind.__qualname__} cannot be part of a key")


class _Keyer:
    """Encodes one call's parameters: the stored form and the in-process key."""

    def __init__(self, fn: Callable[..., Any], params_encoder: Callable[..., object] | None):
        self.fn = fn
        self.params_encoder = params_encoder

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[object, Hashable]:
        if self.params_encoder is not None:
            encoded: object = self.params_encoder(*args, **kwargs)
        else:
            encoded = (tuple(args), dict(kwargs))
        try:
            return encoded, _frozen(encoded)
        except _Unkeyable as exc:
            raise exceptions.CustomParamsEncoderRequiredError(self.fn, str(exc)) from exc


def _enabled(settings: config.Settings | None) -> bool:
    return (settings or config.current()).enabled


class _BaseMemoizer(ABC):
    """``memoize`` on top of a subclass's ``record`` and ``replay``."""

    @abstractmethod
    def record(
        self,
        custom_params_encoder: Callable[_P, object] | None = None,
        custom_result_encoder: ResultEncoderFactory[_P, _R, _EncodedR] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """Decorator: call, store the (encoded) result, return the function's own result."""

    @abstractmethod
    def replay(
        self,
        custom_params_encoder: Callable[_P, object] | None = None,
        custom_result_decoder: ResultDecoderFactory[_P, _R, _EncodedR] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """Decorator: the stored result (decoded) without calling; ``KeyError`` on a miss."""

    def memoize(
        self,
        custom_params_encoder: Callable[_P, object] | None = None,
        custom_result_encoder: ResultEncoderFactory[_P, _R, _EncodedR] | None = None,
        custom_result_decoder: ResultDecoderFactory[_P, _R, _EncodedR] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """Replay the stored result, or record it by calling the function."""

        def decorator(fn: Callable[_P, _R]) -> Callable[_P, _R]:
            replay_fn = self.replay(custom_params_encoder, custom_result_decoder)(fn)
            record_fn = self.record(custom_params_encoder, custom_result_encoder)(fn)

            @functools.wraps(fn)
            def memoized(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                try:
                    return replay_fn(*args, **kwargs)
                except KeyError:
                    return record_fn(*args, **kwargs)

            return memoized

        return decorator


class Memoizer(_BaseMemoizer):
    """In-process memoization with torch 2.13's call shapes; entries keyed by parameters.

    ``sub_key`` names the memoizer (torch groups its JSON dumps by it); two memoizers
    never share entries. ``settings`` (keyword, default: the environment) only decides
    whether caching is on (``REDIS_CACHE_ENABLED``).
    """

    def __init__(
        self, sub_key: str | None = None, *, settings: config.Settings | None = None
    ) -> None:
        self.sub_key = sub_key
        self._settings = settings
        self._entries: dict[Hashable, CacheEntry] = {}
        self._lock = threading.Lock()
        # A pending recording lives as long as the encoder's owner keeps it.
        self._pending: weakref.WeakValueDictionary[Hashable, DeferredRecording[Any, Any]] = (
            weakref.WeakValueDictionary()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def cache_clear(self) -> None:
        """Forget every entry of this memoizer."""
        with self._lock:
            self._entries.clear()

    # -- the store (PersistentMemoizer fills it from its lower layers) ---------------

    def _get(self, key: Hashable) -> CacheEntry | None:
        return self._entries.get(key)

    def _insert(self, key: Hashable, entry: CacheEntry) -> CacheEntry:
        """First writer wins, as in every layer: the entry now stored is returned."""
        with self._lock:
            return self._entries.setdefault(key, entry)

    def _pending_for(self, key: Hashable) -> DeferredRecording[Any, Any] | None:
        return self._pending.get(key)

    # -- decorators ----------------------------------------------------------------

    def record(
        self,
        custom_params_encoder: Callable[_P, object] | None = None,
        custom_result_encoder: ResultEncoderFactory[_P, _R, _EncodedR] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """Call, store the (encoded) result, return the function's own result."""

        def decorator(fn: Callable[_P, _R]) -> Callable[_P, _R]:
            keyer = _Keyer(fn, custom_params_encoder)

            @functools.wraps(fn)
            def recorded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                result = fn(*args, **kwargs)
                if _enabled(self._settings):
                    self._record(keyer, custom_result_encoder, args, kwargs, result)
                return result

            return recorded

        return decorator

    def _record(
        self,
        keyer: _Keyer,
        result_encoder: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: object,
    ) -> tuple[Hashable, object, CacheEntry | None]:
        """Store one call: its key, encoded parameters and entry (``None`` while deferred)."""
        encoded_params, key = keyer(args, kwargs)
        encoded = result_encoder(keyer.fn)(*args, **kwargs)(result) if result_encoder else result
        if isinstance(encoded, DeferredRecording):
            self._pending[key] = encoded

            def finalized(encoded_result: object) -> None:
                self._pending.pop(key, None)
                self._insert(key, CacheEntry(encoded_params, encoded_result))

            encoded.register_callback(finalized)
            return key, encoded_params, None
        return key, encoded_params, self._insert(key, CacheEntry(encoded_params, encoded))

    def replay(
        self,
        custom_params_encoder: Callable[_P, object] | None = None,
        custom_result_decoder: ResultDecoderFactory[_P, _R, _EncodedR] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """The stored result (decoded) without calling the function; ``KeyError`` on a miss."""

        def decorator(fn: Callable[_P, _R]) -> Callable[_P, _R]:
            keyer = _Keyer(fn, custom_params_encoder)

            @functools.wraps(fn)
            def replayed(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                if not _enabled(self._settings):
                    raise KeyError("Caching is disabled")
                _, key = keyer(args, kwargs)
                entry = self._get(key)
                if entry is None:
                    pending = self._pending_for(key)
                    interim = pending.get_interim_result() if pending is not None else None
                    if interim is not None:
                        return cast(_R, interim.value)
                    raise KeyError(f"no stored result for {fn.__qualname__}{args!r}")
                if custom_result_decoder is not None:
                    decoder = custom_result_decoder(fn)(*args, **kwargs)
                    return decoder(cast(_EncodedR, entry.encoded_result))
                return cast(_R, entry.encoded_result)

            return replayed

        return decorator


class PersistentMemoizer(Memoizer):
    """A :class:`Memoizer` whose entries also go to disk and Redis, shared by machines.

    ``sub_dir`` names the memoizer's entries in every layer (torch: a directory under
    its cache dir; here the callee of the entries, ``PersistentMemoizer[<sub_dir>]``),
    so two processes or machines that build ``PersistentMemoizer(sub_dir=Path("x"))``
    share entries. Below the in-process entries sits a private ``fcache`` (memo off:
    this memoizer is the memo) with the settings of the environment, or ``settings``.
    ``ischema`` selects the isolation context of the persistent entries.

    Results are stored like any ``fcache`` value: exact builtin types as msgpack, other
    objects as signed pickles only with ``REDIS_CACHE_SECRET``, else
    :class:`CustomResultEncoderRequiredError` (pass a result encoder that returns plain data).
    """

    def __init__(
        self,
        sub_dir: PathLike[str] | str | None = None,
        *,
        settings: config.Settings | None = None,
        ischema: IsolationSchema = PERSISTENT_ISOLATION,
    ) -> None:
        name = str(sub_dir) if sub_dir else None
        super().__init__(sub_key=name, settings=settings)
        self.sub_dir = name
        self.ischema = ischema
        self._entry_name = entry_name("redis_cache.memoizer", f"PersistentMemoizer[{name or ''}]")
        self._fcache: FastCache | None = None
        self._fcache_lock = threading.Lock()

    @property
    def _layers(self) -> FastCache:
        """Disk and Redis below this memoizer, built on first use (never at import)."""
        cache = self._fcache
        if cache is None:
            with self._fcache_lock:
                cache = self._fcache
                if cache is None:
                    settings = self._settings or config.current()
                    cache = FastCache(dataclasses.replace(settings, memo_max_bytes=0))
                    self._fcache = cache
        return cache

    def close(self) -> None:
        """Flush background disk writes and drop connections (tests, orderly shutdown)."""
        with self._fcache_lock:
            cache, self._fcache = self._fcache, None
        if cache is not None:
            cache.close()

    def _record(
        self,
        keyer: _Keyer,
        result_encoder: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: object,
    ) -> tuple[Hashable, object, CacheEntry | None]:
        key, encoded_params, entry = super()._record(keyer, result_encoder, args, kwargs, result)
        if entry is not None:
            self._persist(encoded_params, entry.encoded_result)
        else:
            pending = self._pending_for(key)
            if pending is not None:  # registered after the in-process callback: runs after it
                pending.register_callback(lambda encoded: self._persist(encoded_params, encoded))
        return key, encoded_params, entry

    def _persist(self, encoded_params: object, encoded_result: object) -> None:
        self._layers.insert(
            self._entry_name, ((encoded_params,), {}), encoded_result, ischema=self.ischema
        )

    def replay(
        self,
        custom_params_encoder: Callable[_P, object] | None = None,
        custom_result_decoder: ResultDecoderFactory[_P, _R, _EncodedR] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """In-process entries first, then disk and Redis; a lower hit fills the memoizer."""

        def decorator(fn: Callable[_P, _R]) -> Callable[_P, _R]:
            in_process = super(PersistentMemoizer, self).replay(
                custom_params_encoder, custom_result_decoder
            )(fn)
            keyer = _Keyer(fn, custom_params_encoder)

            @functools.wraps(fn)
            def replayed(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                try:
                    return in_process(*args, **kwargs)
                except KeyError:
                    if not _enabled(self._settings):
                        raise
                encoded_params, key = keyer(args, kwargs)
                hit = self._layers.get(
                    self._entry_name, ((encoded_params,), {}), ischema=self.ischema
                )
                if hit is None:
                    raise KeyError(f"no stored result for {fn.__qualname__}{args!r}")
                entry = self._insert(key, CacheEntry(encoded_params, hit.value))
                if custom_result_decoder is not None:
                    decoder = custom_result_decoder(fn)(*args, **kwargs)
                    return decoder(cast(_EncodedR, entry.encoded_result))
                return cast(_R, entry.encoded_result)

            return replayed

        return decorator
