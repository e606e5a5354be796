"""A Triton remote cache backend on redis_cache.

Triton shares compiled kernels through a remote cache when told to::

    TRITON_CACHE_MANAGER=triton.runtime.cache:RemoteCacheManager
    TRITON_REMOTE_CACHE_BACKEND=redis_cache.triton:RemoteCacheBackend

Its ``RemoteCacheManager`` builds one backend per cache key (a kernel, or a launcher
module) as ``RemoteCacheBackend(key)``, reads with ``get(filenames) -> {name: bytes}``
(a group of files at once) and writes with ``put(filename, data)``; it then writes
what it read to its local cache directory and loads it. Those files are cubins,
HSACO objects and launcher ``.so`` modules: executable code. So:

- entries are signed with ``REDIS_CACHE_SECRET``; without it this backend warns once
  and stores and returns nothing (Triton compiles locally as if the cache were empty);
- an entry's key is Triton's key, the GPU target of the current device (``cuda:90``)
  and the host platform (OS, CPU, Python ABI, libc), so a launcher built for one
  host or a binary built for one GPU never reaches another;
- ``get`` of several files is one batched lookup (``get_many``).

Failures are misses, as Triton expects of a cache. See docs/torch.md.
"""

from __future__ import annotations

import functools
import platform
import sys
import sysconfig
import threading
import warnings
from collections.abc import Sequence

from . import config, exceptions
from .blobs import BlobStore, IntegrationWarning, entry_name, require_secret

ENTRIES = entry_name("redis_cache.triton", "RemoteCacheBackend")

_stores: dict[config.Settings, BlobStore] = {}
_stores_lock = threading.Lock()
_refusal_warned = False


@functools.cache
def host_platform() -> str:
    """What loading a launcher module depends on besides the GPU: OS, CPU, Python ABI, libc."""
    libc, libc_version = platform.libc_ver()
    return "/".join(
        (
            sysconfig.get_platform(),
            platform.machine(),
            sys.implementation.cache_tag or sys.implementation.name,
            sysconfig.get_config_var("EXT_SUFFIX") or "",
            f"{libc}{libc_version}",
        )
    )


def gpu_target() -> str:
    """The current device's target as Triton names it (``cuda:90``, ``hip:gfx942``).

    ``none`` when Triton has no active driver (no GPU): then nothing it compiles runs
    on a GPU either, and such entries stay apart from every GPU's.
    """
    try:
        from triton.runtime.driver import driver  # noqa: PLC0415 - optional, heavy

        target = driver.active.get_current_target()
        return f"{target.backend}:{target.arch}"
    except Exception:  # no driver, no device: Triton's own lookup fails the same way
        return "none"


def _store(settings: config.Settings) -> BlobStore:
    """One store per settings in a process: Triton builds a backend per kernel."""
    with _stores_lock:
        store = _stores.get(settings)
        if store is None:
            store = _stores[settings] = BlobStore(ENTRIES, settings, host="Triton")
        return store


def _refuse(reason: str) -> None:
    global _refusal_warned
    if not _refusal_warned:
        _refusal_warned = True
        warnings.warn(
            f"redis_cache (Triton): {reason}; the remote cache stores and returns nothing",
            IntegrationWarning,
            stacklevel=3,
        )


class RemoteCacheBackend:
    """Triton's remote cache backend interface, served by redis_cache (see the module doc).

    ``settings``, ``target`` and ``host`` are for tests and embedding; Triton passes
    only ``key``, and they default to the environment, the current device and this host.
    """

    def __init__(
        self,
        key: str,
        *,
        settings: config.Settings | None = None,
        target: str | None = None,
        host: str | None = None,
    ) -> None:
        self.key = key
        self.target = target if target is not None else gpu_target()
        self.host = host if host is not None else host_platform()
        self._store: BlobStore | None = None
        try:
            resolved = settings if settings is not None else config.current()
            require_secret(resolved, "Triton")
        except exceptions.CacheError as exc:
            _refuse(str(exc))
            return
        self._store = _store(resolved)

    def _entry(self, filename: str) -> tuple[str, str, str, str]:
        return (self.key, self.target, self.host, filename)

    def get(self, filenames: Sequence[str]) -> dict[str, bytes]:
        """The files found, by name (missing ones are absent), in one batched lookup."""
        if self._store is None or not filenames:
            return {}
        found = self._store.get_many([self._entry(name) for name in filenames])
        return {name: data for name, data in zip(filenames, found, strict=True) if data is not None}

    def put(self, filename: str, data: bytes) -> None:
        """Store one file (first writer wins; a value over the limit stays on this host)."""
        if self._store is not None:
            self._store.put(self._entry(filename), data)
