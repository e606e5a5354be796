"""Share the results of expensive function calls across processes and machines.

``fcache`` (fast, fails open), ``dcache`` (deterministic, fails closed) and
``icache`` (``dcache`` when ``REDIS_CACHE_DETERMINISTIC=1`` at import, else
``fcache``) memoize through an in-process memo, a per-machine disk layer and a
shared Redis layer. Import never fails on configuration: settings are read and
validated on first use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import context, exceptions
from .context import IsolationSchema, SelectedCompileContext, SelectedRuntimeContext
from .envvars import deterministic_at_import
from .exceptions import (
    CacheError,
    CorruptEntryError,
    CustomParamsEncoderRequiredError,
    CustomResultDecoderRequiredError,
    CustomResultEncoderRequiredError,
    DeterministicCachingDisabledError,
    DeterministicCachingIMCDumpConflictError,
    DeterministicCachingInvalidConfigurationError,
    DeterministicCachingRequiresStrongConsistencyError,
    DiskLayerError,
    DistributedLockTimeoutError,
    FileLockTimeoutError,
    InvalidDeterministicSettingError,
    InvalidDumpFileError,
    InvalidSettingError,
    KeyEncodingError,
    KeyPicklingError,
    LockTimeoutError,
    RemoteError,
    RemoteUnavailableError,
    StrictDeterministicCachingInsertionError,
    StrictDeterministicCachingKeyNotFoundError,
    SystemError,
    UncacheableCallableError,
    UnsupportedValueError,
    UnverifiedEntryError,
    UserError,
    ValueDecodingError,
    ValueEncodingError,
    ValuePicklingError,
    ValueTooLargeError,
    ValueUnPicklingError,
)
from .interfaces import CacheInterface, DeterministicCache, FastCache, Hit
from .stats import CacheStats

# Quiet by default: applications opt in with logging.getLogger("redis_cache").
logging.getLogger("redis_cache").addHandler(logging.NullHandler())

fcache: FastCache = FastCache()
dcache: DeterministicCache = DeterministicCache()
icache: CacheInterface = dcache if deterministic_at_import() else fcache

if TYPE_CHECKING:
    from . import config, encoders, locks
    from .memoizer import Memoizer, PersistentMemoizer

_LAZY = {
    "Memoizer": "memoizer",
    "PersistentMemoizer": "memoizer",
    "encoders": None,
    "config": None,
    "locks": None,
}


def __getattr__(name: str) -> Any:
    """Modules and names most workers never touch, imported on first use (torch 2.13's
    memoizer API; settings are parsed on a cache's first call, not at import)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'redis_cache' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    module = _LAZY[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "CacheError",
    "CacheInterface",
    "CacheStats",
    "CorruptEntryError",
    "CustomParamsEncoderRequiredError",
    "CustomResultDecoderRequiredError",
    "CustomResultEncoderRequiredError",
    "DeterministicCache",
    "DeterministicCachingDisabledError",
    "DeterministicCachingIMCDumpConflictError",
    "DeterministicCachingInvalidConfigurationError",
    "DeterministicCachingRequiresStrongConsistencyError",
    "DiskLayerError",
    "DistributedLockTimeoutError",
    "FastCache",
    "FileLockTimeoutError",
    "Hit",
    "InvalidDeterministicSettingError",
    "InvalidDumpFileError",
    "InvalidSettingError",
    "IsolationSchema",
    "KeyEncodingError",
    "KeyPicklingError",
    "LockTimeoutError",
    "Memoizer",
    "PersistentMemoizer",
    "RemoteError",
    "RemoteUnavailableError",
    "SelectedCompileContext",
    "SelectedRuntimeContext",
    "StrictDeterministicCachingInsertionError",
    "StrictDeterministicCachingKeyNotFoundError",
    "SystemError",
    "UncacheableCallableError",
    "UnsupportedValueError",
    "UnverifiedEntryError",
    "UserError",
    "ValueDecodingError",
    "ValueEncodingError",
    "ValuePicklingError",
    "ValueTooLargeError",
    "ValueUnPicklingError",
    "config",
    "context",
    "dcache",
    "encoders",
    "exceptions",
    "fcache",
    "icache",
    "locks",
]
