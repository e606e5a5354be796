"""msgpack with exact types: every type a key can hold comes back as itself.

A tuple, set or frozenset is an array whose first item is an empty extension
marker (ext 1, 2, 3); an int beyond 64 bits is ext 4. Returning a list from the
packer's ``default`` (rather than a nested document in an ext) keeps all nesting
inside msgpack's own bounded, non-recursive unpacker. What msgpack would pack
without calling ``default`` but not give back exactly (bytearray, memoryview,
subclasses) is found by :func:`first_inexact` before packing.

An unsigned entry can be planted by anyone who can write to Redis, so with a
``budget`` the containers an unpack builds may take at most that many bytes.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import Any, Final

import msgpack

from . import exceptions

Buffer = bytes | bytearray | memoryview

# msgpack extension type codes (also part of the format). 1-3 are empty markers
# heading an array: [ext1, a, b] is the tuple (a, b); ext 2 a set, ext 3 a frozenset.
EXT_TUPLE: Final = 1
EXT_SET: Final = 2
EXT_FROZENSET: Final = 3
EXT_BIGINT: Final = 4  # int outside [-2**63, 2**64): signed big-endian bytes


class Inexact(Exception):
    """Internal: msgpack cannot hold this value with its exact type."""


_LEAVES: Final = frozenset({type(None), bool, int, float, str, bytes})
_BRANCHES: Final = frozenset({list, tuple, set, frozenset, dict})
_EXACT: Final = _LEAVES | _BRANCHES


def _children(node: Any) -> Any:
    return itertools.chain(node, node.values()) if type(node) is dict else node


def first_inexact(value: object) -> type | None:
    """The first type in ``value`` msgpack would not give back exactly, or None.

    msgpack with ``strict_types`` still packs bytearray, memoryview and ExtType
    as if they were bytes or our own extensions, without calling ``default``;
    this walk catches those (and subclasses) before packing. It goes one nesting
    level at a time with C-level iteration (types checked in bulk), and looks at
    each container once, so shared and cyclic parts end the walk.
    """
    kind = type(value)
    if kind in _LEAVES:
        return None
    if kind not in _BRANCHES:
        return kind
    seen = {id(value)}
    level: list[Any] = [value]
    has_dicts = kind is dict
    while level:
        if has_dicts:
            items: Any = list(itertools.chain.from_iterable(map(_children, level)))
        elif len(level) == 1:
            items = level[0]
        else:
            items = list(itertools.chain.from_iterable(level))
        kinds = set(map(type, items))
        if kinds <= _LEAVES:
            return None
        if not kinds <= _EXACT:
            return next(iter(kinds - _EXACT))
        has_dicts = dict in kinds
        level = list(itertools.compress(items, map(_BRANCHES.__contains__, map(type, items))))
        ids = set(map(id, level))
        if len(ids) != len(level) or not seen.isdisjoint(ids):
            unique = {id(node): node for node in level if id(node) not in seen}
            level = list(unique.values())
        seen |= ids
    return None


class _Mark:
    """Decoded form of an array's leading marker: says what the array really is."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self.build = build


# The packed markers (ExtType is a tuple: one constant object each suffices).
_TUPLE_MARK = msgpack.ExtType(EXT_TUPLE, b"")
_SET_MARK = msgpack.ExtType(EXT_SET, b"")
_FROZENSET_MARK = msgpack.ExtType(EXT_FROZENSET, b"")
_MARKS: Final = {EXT_TUPLE: _Mark(tuple), EXT_SET: _Mark(set), EXT_FROZENSET: _Mark(frozenset)}


def _default(obj: Any) -> Any:
    """msgpack's hook for what it does not know: our extensions, or refusal.

    A tuple, set or frozenset becomes an array whose first item is an empty ext
    marker. Returning a list (not a nested msgpack document in an ext) keeps all
    nesting inside msgpack's own bounded, non-recursive unpacker: nested
    ``unpackb`` calls from an ext hook each take ~32 KiB of C stack and crash the
    interpreter after about a hundred levels.
    """
    kind = type(obj)
    if kind is tuple:
        return [_TUPLE_MARK, *obj]
    if kind is set:
        return [_SET_MARK, *obj]
    if kind is frozenset:
        return [_FROZENSET_MARK, *obj]
    if kind is int:  # msgpack calls default only for ints beyond 64 bits
        size = (obj.bit_length() + 8) >> 3
        return msgpack.ExtType(EXT_BIGINT, obj.to_bytes(size, "big", signed=True))
    raise Inexact(kind.__qualname__)


def pack(value: object) -> bytes:
    """The fast path; lone surrogates make it raise UnicodeEncodeError."""
    data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=True, default=_default)
    return data


def pack_surrogates(value: object) -> bytes:
    """For strs with lone surrogates (the unpacker always decodes with
    surrogatepass, which changes nothing for valid UTF-8)."""
    data: bytes = msgpack.packb(
        value,
        use_bin_type=True,
        strict_types=True,
        default=_default,
        unicode_errors="surrogatepass",
    )
    return data


def unpack(data: Buffer, budget: int | None = None) -> Any:
    """msgpack to value, with our extensions; raises on anything malformed.

    Every marker made must be consumed as the first item of an array: one
    anywhere else (top level, map key or value, later in an array) is garbage,
    found by counting rather than by scanning every item. With a ``budget``
    (unsigned entries), the containers built may take at most that many bytes,
    counted as they are built and capped per container before msgpack allocates.
    """
    hooks = _Unpacking(budget)
    limits: dict[str, Any] = {}
    if budget is not None:
        # msgpack allocates a container of the declared length before filling it.
        limits = {"object_hook": hooks.charge, "max_array_len": budget // 8,
                  "max_map_len": budget // 64}  # fmt: skip
    value = msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=False,
        unicode_errors="surrogatepass",
        ext_hook=hooks.ext,
        list_hook=hooks.list,
        **limits,
    )
    if hooks.made != hooks.used:
        raise _corrupt("msgpack extension marker out of place")
    return value


class _Unpacking:
    """The unpacker's hooks for one payload: markers made and used, bytes spent."""

    __slots__ = ("budget", "made", "spent", "used")

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.made = self.used = self.spent = 0

    def charge(self, container: Any) -> Any:
        self.spent += sys.getsizeof(container)
        if self.budget is not None and self.spent > self.budget:
            raise _corrupt(
                f"unsigned entry decodes to more than {self.budget} bytes of containers "
                f"(over {UNSIGNED_MAX_EXPANSION} per payload byte)"
            )
        return container

    def ext(self, code: int, payload: bytes) -> object:
        mark = _MARKS.get(code)
        if mark is not None:
            if payload:
                raise _corrupt(f"msgpack extension {code} has a payload")
            self.made += 1
            return mark
        if code == EXT_BIGINT:
            return int.from_bytes(payload, "big", signed=True)
        raise _corrupt(f"unknown msgpack extension type {code}")

    def list(self, items: list[Any]) -> Any:
        if items and type(items[0]) is _Mark:
            self.used += 1
            built = items[0].build(itertools.islice(items, 1, None))
            return built if self.budget is None else self.charge(built)
        return items if self.budget is None else self.charge(items)


UNSIGNED_MAX_EXPANSION: Final = 48  # bytes of decoded containers per raw payload byte
UNSIGNED_EXPANSION_ALLOWANCE: Final = 1 << 20


def expansion_budget(raw_length: int) -> int:
    """What an unsigned payload of ``raw_length`` bytes may decode to, in bytes."""
    return UNSIGNED_MAX_EXPANSION * raw_length + UNSIGNED_EXPANSION_ALLOWANCE


def _corrupt(detail: str) -> exceptions.CorruptEntryError:
    return exceptions.CorruptEntryError(f"corrupt cache entry: {detail}")
