"""``record``'s wrapper: a fast index on the raw arguments in front of the call path.

A repeated call with arguments :mod:`redis_cache.fastkeys` can key exactly is a
dict lookup and one counter; anything else takes the interface's full path
(canonical key, memo, layers, flight) and then indexes what it found. With torch
installed the index also keys on the runtime settings' fingerprint, read once per
call, so a setting flipped between the lookup and the slow path cannot index an
entry under the wrong settings.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import context
from .fastkeys import fast_key, indexable
from .hooks import Event, emit
from .hooks import active as _hooks

if TYPE_CHECKING:
    from .callees import Callee
    from .interfaces import CacheInterface, Encoder
    from .layers.memo import MemoEntry
    from .runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")


class FastIndex:
    """One function's index on raw arguments.

    Weak-referenceable, so that ``close()`` reaches every index without keeping one
    alive. ``get`` and ``insert`` share the index of a recorded function.
    """

    __slots__ = ("__weakref__", "entries", "fn")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.entries: dict[Any, MemoEntry] = {}
        self.fn = weakref.ref(fn) if _weakrefable(fn) else None


def _weakrefable(obj: object) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


class FastIndexes:
    """An interface's indexes: one shared per function for its default calls."""

    def __init__(self) -> None:
        self._all: weakref.WeakSet[FastIndex] = weakref.WeakSet()
        # By id(fn), only indexes whose ``fn`` is a weakref (dropping dead ones): the
        # hot path of ``get`` reads it directly, checking ``index.fn() is fn``.
        self.by_fn: dict[int, FastIndex] = {}

    def shared(self, fn: Callable[..., Any]) -> FastIndex:
        """The index of ``fn``'s calls without schema or params encoder."""
        index = self.by_fn.get(id(fn))
        if index is not None and index.fn is not None and index.fn() is fn:
            return index
        index = self.private(fn)
        if index.fn is not None:
            by_fn, ident = self.by_fn, id(fn)
            index.fn = weakref.ref(fn, lambda _: by_fn.pop(ident, None))
            by_fn[ident] = index
        return index

    def private(self, fn: Callable[..., Any]) -> FastIndex:
        index = FastIndex(fn)
        self._all.add(index)
        return index

    def clear(self) -> None:
        for index in list(self._all):
            index.entries.clear()


def index_entry(  # noqa: PLR0917
    runtime: Runtime, index: FastIndex, entry: MemoEntry, fk: Any, ik: Any, params: Any
) -> None:
    """Reach ``entry`` from ``index`` under ``ik`` (``fk`` with any isolation), if exact."""
    args, kwargs = params
    if indexable(fk, tuple(args), kwargs):
        runtime.memo.index(entry, index.entries, ik)


def wrap(  # noqa: PLR0917
    cache: CacheInterface,
    fn: Callable[P, R],
    callee: Callee,
    ischema: context.IsolationSchema | None,
    params_encoder: Callable[..., Any] | None,
    encode: Encoder | None,
    decode: Encoder | None,
) -> Callable[P, R]:
    """``fn`` memoized through ``cache``, its signature kept."""
    keyer = context.IsolationKeyer(ischema)
    varies = keyer.varies
    default = ischema is None and params_encoder is None
    index = cache._fast.shared(fn) if default else cache._fast.private(fn)
    entries = index.entries
    counters = cache._stats.callee(callee.name)
    name, space, hooks = callee.name, cache.space, _hooks

    def slow(args: tuple[Any, ...], kwargs: dict[str, Any], payload: Any,
             probe: tuple[Any, Any, Any]) -> R:  # fmt: skip
        runtime = cache._runtime()
        if not runtime.settings.enabled:
            return fn(*args, **kwargs)
        fk, ik, fingerprint = probe
        key = cache._key_of(fn, callee, keyer.key(fingerprint), payload)
        entry = cache._lookup(runtime, key)
        if entry is None:
            entry = cache._compute(runtime, key, functools.partial(fn, *args, **kwargs), encode)
        if fk is not None:
            keyed = (args, kwargs) if params_encoder is None else ((payload,), None)
            index_entry(runtime, index, entry, fk, ik, keyed)
        value: R = entry.value if decode is None else decode(entry.value)
        return value

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if params_encoder is None:
            payload: Any = (args, kwargs)
            fk = fast_key(args, kwargs)
        else:  # the encoder may read state that changes (a target arch): key on its output
            payload = params_encoder(*args, **kwargs)
            fk = fast_key((payload,), None)
        fingerprint = keyer.fingerprint() if varies else None
        ik = fk if fingerprint is None else (fingerprint, fk)
        if fk is not None:
            entry = entries.get(ik)
            if entry is not None:
                entry.used = True
                counters.memo_hits += 1
                if hooks:
                    emit(Event("hit", space, name, "memo"))
                value: R = entry.value if decode is None else decode(entry.value)
                return value
        return slow(args, kwargs, payload, (fk, ik, fingerprint))

    wrapper.__redis_cache_index__ = index  # type: ignore[attr-defined] # kept alive with it
    return wrapper
