"""The exception hierarchy of the contract.

Names and parents of the classes in the design contract are fixed (code outside
this project catches them); the subclasses below them are ours. Messages never
carry credentials or secrets: callers pass redacted server names only.
"""

from __future__ import annotations

import builtins
import copy
from typing import Any


class CacheError(Exception):
    """Root of every error this package raises on purpose."""


class SystemError(CacheError, builtins.RuntimeError):
    """The environment failed us (locks, servers, files), not the caller."""


class LockTimeoutError(SystemError):
    """A thread lock or a distributed lock could not be had in time."""

    def __init__(self, lock: object, timeout: float | None, detail: str = "") -> None:
        self.lock = lock
        self.timeout = timeout
        extra = f": {detail}" if detail else ""
        super().__init__(f"failed to acquire lock {lock} within {timeout} seconds{extra}")


class DistributedLockTimeoutError(LockTimeoutError):
    """The Redis lease lock of one entry stayed held by another worker too long."""


class FileLockTimeoutError(SystemError):
    """A per-machine file lock could not be had in time."""

    def __init__(self, flock: object, timeout: float | None) -> None:
        self.flock = flock
        self.timeout = timeout
        super().__init__(f"failed to acquire file lock {flock} within {timeout} seconds")


class DeterministicCachingIMCDumpConflictError(SystemError):
    """Two dumps of the deterministic memo disagree about one key."""


class RemoteUnavailableError(SystemError):
    """The Redis layer could not be used; the message names the server, never credentials."""


class RemoteError(RemoteUnavailableError):
    """A Redis operation failed; ``transient`` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class DiskLayerError(SystemError):
    """The disk layer could not read or write (full, read-only, permissions)."""


class UserError(CacheError, TypeError):
    """The caller asked for something the cache cannot do."""


class InvalidSettingError(UserError):
    """A ``REDIS_CACHE_*`` variable holds a value we do not accept."""

    def __init__(self, variable: str, value: str, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is not valid; accepted: {accepted}")


class KeyEncodingError(UserError):
    """Parameters cannot be encoded into a canonical key."""


class KeyPicklingError(KeyEncodingError):
    """Parameters hold a value of a type the canonical key encoder does not know."""

    def __init__(self, key: Any, detail: str = "") -> None:
        self.key_type = type(key)
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"cannot encode a cache key from a value of type {type(key).__qualname__}{extra}"
        )


class ValueEncodingError(UserError):
    """A result cannot be encoded for storage."""


class ValuePicklingError(ValueEncodingError):
    """A result could be encoded by neither msgpack nor (signed) pickle."""

    def __init__(self, value: Any, detail: str = "") -> None:
        self.value_type = type(value)
        extra = f": {detail}" if detail else ""
        super().__init__(f"cannot encode a result of type {type(value).__qualname__}{extra}")


class UnsupportedValueError(ValueEncodingError):
    """A result msgpack cannot hold exactly, and no secret is set to sign a pickle of it."""


class ValueTooLargeError(ValueEncodingError):
    """An encoded result is larger than ``REDIS_CACHE_MAX_VALUE_BYTES``."""


class InvalidDumpFileError(UserError):
    """A dump file is foreign, truncated or corrupt; nothing was loaded from it."""


class ValueDecodingError(UserError):
    """A stored entry cannot be turned back into a value."""

    def located(self, where: str) -> ValueDecodingError:
        """The same error (same class), its message prefixed with the entry it concerns."""
        located = copy.copy(self)
        located.args = (f"{where}: {self}",)
        return located


class ValueUnPicklingError(ValueDecodingError):
    """A signed pickle verified but could not be unpickled (missing class, say)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"failed to unpickle a verified cache entry: {detail}")


class CorruptEntryError(ValueDecodingError):
    """A stored entry is truncated, garbled, of a foreign format, or failed its check."""


class UnverifiedEntryError(ValueDecodingError):
    """A signed entry does not verify with this process's secret.

    Such entries are misses, never deleted: fleets with other secrets own them.
    """


class CustomParamsEncoderRequiredError(UserError):
    """Parameters need a ``custom_params_encoder`` to become a key."""

    def __init__(self, fn: Any, detail: str = "") -> None:
        # Never the repr of fn: a partial's or an instance's repr shows its arguments.
        name = (
            fn
            if isinstance(fn, str)
            else f"{getattr(fn, '__module__', '?')}."
            f"{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        )
        extra = f": {detail}" if detail else ""
        super().__init__(
            f"parameters of {name} cannot be encoded as a cache key{extra}; "
            "pass custom_params_encoder"
        )


class UncacheableCallableError(UserError):
    """The callable can never be cached: an ``async def`` function, an async generator,
    a ``classmethod`` object, or something that is not callable."""


class MainModuleKeyWarning(UserWarning):
    """A function of ``__main__`` is keyed by its name alone: every script and notebook
    cell defining a function of that name shares its entries."""


class CustomResultEncoderRequiredError(UserError):
    """A result needs a ``custom_result_encoder`` (or a secret for signed pickles)."""


class CustomResultDecoderRequiredError(UserError):
    """A ``custom_result_encoder`` was given without its decoder."""


class DeterministicCachingDisabledError(UserError):
    """``dcache`` was used while ``REDIS_CACHE_DETERMINISTIC`` is not ``1``."""


class DeterministicCachingRequiresStrongConsistencyError(UserError):
    """Global determinism was asked of a server that cannot guarantee it."""


class DeterministicCachingInvalidConfigurationError(UserError):
    """The deterministic settings contradict each other or are malformed."""


class InvalidDeterministicSettingError(
    InvalidSettingError, DeterministicCachingInvalidConfigurationError
):
    """A deterministic-mode variable holds a value we do not accept."""


class StrictDeterministicCachingKeyNotFoundError(UserError):
    """Strict mode: the key is in neither the memo nor the synchronization layer."""


class StrictDeterministicCachingInsertionError(UserError):
    """Strict mode forbids inserts."""
