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
    CustomParamsEncoderRequiredError,
    CustomResultDecoderRequiredError,
    CustomResultEncoderRequiredError,
    DeterministicCachingDisabledError,
    DeterministicCachingIMCDumpConflictError,
    DeterministicCachingInvalidConfigurationError,
    DeterministicCachingRequiresStrongConsistencyError,
    FileLockTimeoutError,
    KeyEncodingError,
    KeyPicklingError,
    LockTimeoutError,
    StrictDeterministicCachingInsertionError,
    StrictDeterministicCachingKeyNotFoundError,
    SystemError,
    UserError,
    ValueDecodingError,
    ValueEncodingError,
    ValuePicklingError,
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
    "CustomParamsEncoderRequiredError",
    "CustomResultDecoderRequiredError",
    "CustomResultEncoderRequiredError",
    "DeterministicCache",
    "DeterministicCachingDisabledError",
    "DeterministicCachingIMCDumpConflictError",
    "DeterministicCachingInvalidConfigurationError",
    "DeterministicCachingRequiresStrongConsistencyError",
    "FastCache",
    "FileLockTimeoutError",
    "Hit",
    "IsolationSchema",
    "KeyEncodingError",
    "KeyPicklingError",
    "LockTimeoutError",
    "Memoizer",
    "PersistentMemoizer",
    "SelectedCompileContext",
    "SelectedRuntimeContext",
    "StrictDeterministicCachingInsertionError",
    "StrictDeterministicCachingKeyNotFoundError",
    "SystemError",
    "UserError",
    "ValueDecodingError",
    "ValueEncodingError",
    "ValuePicklingError",
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
