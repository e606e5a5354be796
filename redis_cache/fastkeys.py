"""Keys of the in-process fast index: raw arguments to a memoized entry, in ~1 µs or less.

The canonical key (:mod:`redis_cache.keys`) hashes an encoding of every argument:
exact across machines, and ~20x the cost of a dict lookup. In front of the memo,
each function keeps an index on its raw arguments, so a repeated call costs a
lookup. Its keys must be as exact as the canonical ones within one process:
``1``, ``1.0`` and ``True`` compare equal in Python, as do ``0.0`` and ``-0.0``,
``(1, 2)`` and ``(1.0, 2)``, yet they are different calls.

- Positional arguments that are all ``str``, ``int``, ``bytes`` or ``None`` (types
  that never compare equal to one another) are their own key: one type check each.
- Anything else is keyed by ``marshal.dumps((args, kwargs), 2)``: C speed, one type
  code per value (``int``, ``bool``, ``float`` by its bits, ``tuple``, ``list``,
  ``dict``, ``set``...), independent of reference counts and interning in version 2.
  Keyword order changes the bytes: a different order only misses the index once.
- ``marshal`` writes any buffer (``bytearray``, ``memoryview``, arrays) as if it were
  ``bytes``, so an index keyed by marshal must not hold keys made from ``bytes``:
  :func:`indexable` says so, and such calls take the canonical path each time.
- Types marshal refuses (objects, subclasses) have no fast key: canonical path.

A fast key only ever maps to an entry the canonical path produced for the same
arguments, so it can miss but never answer for other arguments.
"""

from __future__ import annotations

import marshal
from collections.abc import Hashable
from typing import Any

__all__ = ["fast_key", "indexable"]

_PLAIN = frozenset({str, int, bytes, type(None)})
_CONTAINERS = (tuple, list, dict, set, frozenset)
_MARSHAL_VERSION = 2


def fast_key(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Hashable | None:
    """The index key of a call, or ``None`` when it has none."""
    if not kwargs:
        for arg in args:
            if type(arg) not in _PLAIN:
                break
        else:
            return args
    try:
        return marshal.dumps((args, kwargs), _MARSHAL_VERSION)
    except (ValueError, RecursionError):  # an unmarshallable type, or very deep nesting
        return None


def indexable(key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """Whether ``key`` may enter an index: a marshal key must not come from ``bytes``."""
    if type(key) is not bytes:
        return True
    return not (_holds_bytes(args) or (kwargs is not None and _holds_bytes(kwargs)))


def _holds_bytes(value: Any) -> bool:
    kind = type(value)
    if kind is bytes:
        return True
    if kind is dict:
        return any(_holds_bytes(k) or _holds_bytes(v) for k, v in value.items())
    if kind in _CONTAINERS:
        return any(_holds_bytes(item) for item in value)
    return False
