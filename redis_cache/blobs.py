"""Opaque blobs under a host's own keys, for the torch and Triton integrations.

A compiler host (torch's remote caches, Triton's remote cache manager) hands us bytes
under a key it computed itself and unpickles or executes what it reads back. This
module stores them through ``fcache``'s layers (disk, then Redis) with the guarantees
those hosts need and nothing more:

- one fixed callee per host (:func:`entry_name`) and no isolation context, so every
  machine that computes the same host key addresses the same entry (the host's key
  already hashes its build, configuration and inputs);
- no memo: a compiled graph or a cubin is read once per compile and can be tens of
  MiB, so a private ``FastCache`` with ``memo_max_bytes=0`` keeps them from piling up;
- signed entries only: the hosts refuse to start a store without ``REDIS_CACHE_SECRET``,
  and the codec returns nothing whose HMAC does not verify;
- it never raises a :class:`CacheError` to the host, which must keep compiling: a
  failure is a miss (or a dropped write) and one warning per kind and process;
- a value over ``REDIS_CACHE_MAX_VALUE_BYTES`` stays on this machine's disk, with one
  warning per process.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import config, exceptions
from .context import IsolationSchema
from .interfaces import FastCache

# The host's key is the whole identity of an entry: nothing of this process is added.
NO_CONTEXT = IsolationSchema(runtime_context=False, compile_context=False)


class IntegrationWarning(RuntimeWarning):
    """A compiler integration could not do its job and left the host as it was."""


def entry_name(module: str, qualname: str) -> Callable[..., NoReturn]:
    """A function that only names a family of entries: ``f"{module}.{qualname}"``.

    fcache keys an entry on its callable's module and qualified name and never calls
    it for ``get``/``insert``. The integrations have no function of their own to offer,
    so they name their entries with a plain function whose names are set here (a plain
    function, because fcache's callee rules ask more of other callables).
    """

    def entries(*args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{module}.{qualname} names cache entries; it cannot be called")

    entries.__module__ = module
    entries.__qualname__ = qualname
    entries.__name__ = qualname
    return entries


def require_secret(settings: config.Settings, host: str) -> None:
    """Refuse to serve a host that unpickles or executes what it reads without a secret."""
    if settings.secret is None:
        raise exceptions.InvalidSettingError(
            "REDIS_CACHE_SECRET",
            "",
            f"at least 16 characters: {host} loads what the cache returns (pickles, "
            "executable code), so only entries signed with the fleet's secret may reach it",
        )


class BlobStore:
    """``get``/``put`` of bytes under string parts of a host key; fails open, never memoizes."""

    def __init__(
        self, name: Callable[..., NoReturn], settings: config.Settings | None = None, *, host: str
    ) -> None:
        self.name = name
        self.host = host
        self._settings = settings
        self._cache: FastCache | None = None
        self._max_value_bytes = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def cache(self) -> FastCache:
        """The private fast cache, built on first use from the settings (memo off)."""
        cache = self._cache
        if cache is None:
            with self._lock:
                cache = self._cache
                if cache is None:
                    settings = self._settings or config.current()
                    self._max_value_bytes = settings.max_value_bytes
                    cache = FastCache(dataclasses.replace(settings, memo_max_bytes=0))
                    self._cache = cache
        return cache

    def warn_once(self, kind: str, message: str) -> None:
        """One warning per kind and store; the host keeps running either way."""
        if kind in self._warned:
            return
        self._warned.add(kind)
        warnings.warn(f"redis_cache ({self.host}): {message}", IntegrationWarning, stacklevel=3)

    def get(self, key: Sequence[str]) -> bytes | None:
        """The verified bytes stored under ``key``, or ``None`` (miss, or any failure)."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[Sequence[str]]) -> list[bytes | None]:
        """One result per key, in order; a failure makes every key a miss."""
        try:
            hits = self.cache.get_many(
                self.name, [(tuple(key), {}) for key in keys], ischema=NO_CONTEXT
            )
        except exceptions.CacheError as exc:
            self.warn_once("get", f"lookups fail, serving misses: {exc}")
            return [None] * len(keys)
        # Only bytes were ever stored under this name; anything else is not ours to hand on.
        return [h.value if h is not None and isinstance(h.value, bytes) else None for h in hits]

    def put(self, key: Sequence[str], data: bytes) -> bool:
        """Store ``data`` unless an entry exists (first writer wins); ``False`` if not stored."""
        cache = self.cache
        try:
            oversize_before = cache.stats().oversize_values
            inserted = cache.insert(self.name, (tuple(key), {}), bytes(data), ischema=NO_CONTEXT)
        except exceptions.CacheError as exc:
            self.warn_once("put", f"writes fail, results stay uncached: {exc}")
            return False
        if cache.stats().oversize_values > oversize_before:
            self.warn_once(
                "oversize",
                f"an entry of {len(data)} bytes (before compression) exceeds "
                f"REDIS_CACHE_MAX_VALUE_BYTES={self._max_value_bytes}; it stays on this "
                "machine's disk (later ones are counted in oversize_values)",
            )
        return inserted

    def close(self) -> None:
        """Flush background disk writes and drop connections."""
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()
