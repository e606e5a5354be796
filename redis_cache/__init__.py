"""Share the results of expensive function calls across processes and machines.

``fcache`` (fast, fails open), ``dcache`` (deterministic, fails closed) and
``icache`` (``dcache`` when ``REDIS_CACHE_DETERMINISTIC=1`` at import, else
``fcache``) memoize through an in-process memo, a per-machine disk layer and a
shared Redis layer. Import never fails on configuration: settings are read and
validated on first use.
"""

from __future__ import annotations

import logging

from . import config, context, encoders, exceptions, locks
from .context import IsolationSchema, SelectedCompileContext, SelectedRuntimeContext
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
from .memoizer import Memoizer, PersistentMemoizer
from .stats import CacheStats

# Quiet by default: applications opt in with logging.getLogger("redis_cache").
logging.getLogger("redis_cache").addHandler(logging.NullHandler())

fcache: FastCache = FastCache()
dcache: DeterministicCache = DeterministicCache()
icache: CacheInterface = dcache if config.deterministic_at_import() else fcache

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
