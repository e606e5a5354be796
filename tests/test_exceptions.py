"""The exception hierarchy is fixed by the contract: names, parents, and exports."""

from __future__ import annotations

import builtins

import pytest

import redis_cache
from redis_cache import exceptions as e

CONTRACT = {
    "CacheError": (Exception,),
    "SystemError": (e.CacheError, builtins.RuntimeError),
    "LockTimeoutError": (e.SystemError,),
    "FileLockTimeoutError": (e.SystemError,),
    "DeterministicCachingIMCDumpConflictError": (e.SystemError,),
    "UserError": (e.CacheError, TypeError),
    "KeyEncodingError": (e.UserError,),
    "KeyPicklingError": (e.KeyEncodingError,),
    "ValueEncodingError": (e.UserError,),
    "ValuePicklingError": (e.ValueEncodingError,),
    "ValueDecodingError": (e.UserError,),
    "ValueUnPicklingError": (e.ValueDecodingError,),
    "CustomParamsEncoderRequiredError": (e.UserError,),
    "CustomResultEncoderRequiredError": (e.UserError,),
    "CustomResultDecoderRequiredError": (e.UserError,),
    "DeterministicCachingDisabledError": (e.UserError,),
    "DeterministicCachingRequiresStrongConsistencyError": (e.UserError,),
    "DeterministicCachingInvalidConfigurationError": (e.UserError,),
    "StrictDeterministicCachingKeyNotFoundError": (e.UserError,),
    "StrictDeterministicCachingInsertionError": (e.UserError,),
}


@pytest.mark.parametrize(("name", "parents"), sorted(CONTRACT.items()))
def test_names_and_parents_are_as_the_contract_says(name: str, parents: tuple[type, ...]) -> None:
    cls = getattr(e, name)
    assert cls.__bases__ == parents
    assert getattr(redis_cache, name) is cls  # exported at the top level too


def test_our_subclasses_stay_inside_the_hierarchy() -> None:
    assert issubclass(e.DistributedLockTimeoutError, e.LockTimeoutError)
    assert issubclass(e.RemoteUnavailableError, e.SystemError)
    assert issubclass(e.ValueTooLargeError, e.ValueEncodingError)
    assert issubclass(e.UnsupportedValueError, e.ValueEncodingError)
    assert issubclass(e.CorruptEntryError, e.ValueDecodingError)
    assert issubclass(e.UnverifiedEntryError, e.ValueDecodingError)
    assert issubclass(
        e.InvalidDeterministicSettingError, e.DeterministicCachingInvalidConfigurationError
    )
    assert issubclass(e.InvalidSettingError, e.UserError)


def test_public_api_names() -> None:
    for name in (
        "fcache",
        "dcache",
        "icache",
        "Hit",
        "IsolationSchema",
        "SelectedCompileContext",
        "SelectedRuntimeContext",
        "config",
        "context",
        "exceptions",
        "locks",
    ):
        assert hasattr(redis_cache, name), name
    for cache in (redis_cache.fcache, redis_cache.dcache):
        for method in ("record", "get", "insert", "lock"):
            assert callable(getattr(cache, method))
    assert redis_cache.Hit(None).value is None
