"""Canonical key encoding: the same parameters give the same bytes on every machine.

Cache entries are shared across processes and machines of a compile farm, so the
key of a call must not depend on anything local: not ``PYTHONHASHSEED`` (set and
dict iteration order), not the pickle protocol, not ``repr``. :func:`encode`
therefore writes its own tagged, length-prefixed binary form:

* every value starts with a one-byte type tag and every variable-length part is
  length-prefixed, so the encoding is prefix-free and hence injective: two
  different structures can never produce the same bytes;
* dicts and sets are written in the order of their *encoded* items, which makes
  them independent of insertion and hash order;
* floats are written as their IEEE-754 bits (``struct '>d'``) rather than their
  value, so ``0.0`` and ``-0.0`` (equal, but giving different results in
  ``math.copysign`` or ``1/x``) are different keys; every NaN is written as one
  canonical bit pattern because NaN payloads are not reproducible across
  platforms and operations;
* only *exact* builtin types are accepted (``type(x) is int``, never
  ``isinstance``): a subclass (``IntEnum``, ``OrderedDict``, a ``str``
  subclass, ...) may carry state or behaviour the encoding would silently drop,
  so two calls that differ would share one entry. Such parameters raise
  :class:`~redis_cache.exceptions.KeyPicklingError`, and the caller can pass a
  ``custom_params_encoder``.

:func:`entry_digest` hashes the encoding of ``(callee, isolation_key, params)``
into the hex digest that names a cache entry. :func:`callee_of` says what a
callable is for a key: its module-qualified name plus what it carries (a
partial's bound arguments, a method's ``self``); :func:`same_value` compares
two results by their canonical encodings.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any, NoReturn

from . import exceptions

__all__ = ["MAX_DEPTH", "Bound", "encode", "entry_digest", "same_value"]

#: Containers nested deeper than this are refused (this also catches cycles).
MAX_DEPTH = 200

_DIGEST_PREFIX = b"redis_cache/key/v1\0"

# One-byte type tags. Never change or reuse one: it would change every key.
_NONE = b"N"
_TRUE = b"T"
_FALSE = b"F"
_INT = b"i"  # fits in a signed 64-bit
_BIGINT = b"I"  # does not
_FLOAT = b"f"
_STR = b"s"
_BYTES = b"b"
_TUPLE = b"t"
_LIST = b"l"
_DICT = b"d"
_SET = b"e"
_FROZENSET = b"z"
_BOUND = b"B"  # a callable's bound state with the call's parameters (never a user value)

_head = struct.Struct(">cQ").pack  # tag + 8-byte length or count
_small_int = struct.Struct(">cq").pack  # tag + 8-byte two's complement
_float = struct.Struct(">cd").pack  # tag + IEEE-754 bits
_NAN = _FLOAT + b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
_EMPTY_DICT = _head(_DICT, 0)


class _Refused(Exception):
    """Internal: raised deep in the walk, turned into KeyPicklingError at the top."""

    def __init__(self, obj: object, reason: str) -> None:
        super().__init__(reason)
        self.obj = obj
        self.reason = reason


_Encoder = Callable[[Any, int], bytes]


def _enc_refuse(obj: object, depth: int) -> bytes:
    raise _Refused(obj, "unsupported type")


def _enc_none(obj: None, depth: int) -> bytes:
    return _NONE


def _enc_bool(obj: bool, depth: int) -> bytes:
    return _TRUE if obj else _FALSE


def _enc_int(obj: int, depth: int) -> bytes:
    # Ints that fit 64 bits take the fixed form; only larger ones the long form,
    # so every int still has exactly one encoding.
    try:
        return _small_int(_INT, obj)
    except struct.error:
        pass
    data = obj.to_bytes((obj.bit_length() + 8) >> 3, "big", signed=True)
    return _head(_BIGINT, len(data)) + data


def _enc_float(obj: float, depth: int) -> bytes:
    if math.isnan(obj):  # one canonical bit pattern whatever the payload or sign
        return _NAN
    return _float(_FLOAT, obj)


def _enc_str(obj: str, depth: int) -> bytes:
    # surrogatepass: lone surrogates are valid in a Python str and must not fail.
    data = obj.encode("utf-8", "surrogatepass")
    return _head(_STR, len(data)) + data


def _enc_bytes(obj: bytes, depth: int) -> bytes:
    return _head(_BYTES, len(obj)) + obj


def _enter(obj: object, depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise _Refused(obj, f"containers nested deeper than {MAX_DEPTH} levels, or a cycle")
    return depth + 1


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _enc_sequence(tag: bytes, obj: tuple[Any, ...] | list[Any], depth: int) -> bytes:
    # Arguments are mostly short sequences of str and small int: encoding those
    # inline (same bytes as _enc_str/_enc_int) saves a call per element.
    depth = _enter(obj, depth)
    parts = [_head(tag, len(obj))]
    append = parts.append
    for x in obj:
        kind = type(x)
        if kind is str:
            data = x.encode("utf-8", "surrogatepass")
            append(_head(_STR, len(data)))
            append(data)
        elif kind is int and _INT_MIN <= x <= _INT_MAX:
            append(_small_int(_INT, x))
        else:
            append(_DISPATCH.get(kind, _enc_refuse)(x, depth))
    return b"".join(parts)


def _enc_tuple(obj: tuple[Any, ...], depth: int) -> bytes:
    return _enc_sequence(_TUPLE, obj, depth)


def _enc_list(obj: list[Any], depth: int) -> bytes:
    return _enc_sequence(_LIST, obj, depth)


def _enc_dict(obj: dict[Any, Any], depth: int) -> bytes:
    if not obj:
        return _EMPTY_DICT
    depth = _enter(obj, depth)
    get = _DISPATCH.get
    # Sorting whole (key, value) encodings orders by key first (encodings are
    # prefix-free) and still gives one order if two keys encode alike (two NaNs).
    items = sorted(
        [
            get(type(k), _enc_refuse)(k, depth) + get(type(v), _enc_refuse)(v, depth)
            for k, v in obj.items()
        ]
    )
    return b"".join([_head(_DICT, len(items)), *items])


def _enc_set(obj: set[Any], depth: int) -> bytes:
    depth = _enter(obj, depth)
    get = _DISPATCH.get
    items = sorted([get(type(x), _enc_refuse)(x, depth) for x in obj])
    return b"".join([_head(_SET, len(items)), *items])


def _enc_frozenset(obj: frozenset[Any], depth: int) -> bytes:
    depth = _enter(obj, depth)
    get = _DISPATCH.get
    items = sorted([get(type(x), _enc_refuse)(x, depth) for x in obj])
    return b"".join([_head(_FROZENSET, len(items)), *items])


class Bound:
    """What a call of a callable that carries state hashes: that state and the parameters.

    Its own tag keeps it apart from every value a params encoder can return, so a
    partial's key can never equal a plain call's key (see :meth:`Callee.payload`).
    """

    __slots__ = ("bound", "params")

    def __init__(self, bound: object, params: object) -> None:
        self.bound = bound
        self.params = params


def _enc_bound(obj: Bound, depth: int) -> bytes:
    depth = _enter(obj, depth)
    return b"".join((_BOUND, _enc(obj.bound, depth), _enc(obj.params, depth)))


# Exact types only: a dict lookup on type() is both the fast path and the subclass refusal.
_DISPATCH: dict[type, _Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    tuple: _enc_tuple,
    list: _enc_list,
    dict: _enc_dict,
    set: _enc_set,
    frozenset: _enc_frozenset,
    Bound: _enc_bound,
}


def _enc(obj: object, depth: int) -> bytes:
    return _DISPATCH.get(type(obj), _enc_refuse)(obj, depth)


_CONTAINERS = (tuple, list, dict, set, frozenset)


def _safe_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:  # an arbitrary __repr__ may fail; this is only for a message
        text = f"<{type(obj).__qualname__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _find(root: object, target: object, limit: int = MAX_DEPTH + 1) -> list[str] | None:
    """Path of subscripts from ``root`` to ``target`` (by identity); error path only."""
    stack: list[tuple[Any, list[str]]] = [(root, [])]
    while stack:
        obj, path = stack.pop()
        if obj is target:
            return path
        if len(path) >= limit or type(obj) not in _CONTAINERS:
            continue
        children: list[tuple[Any, list[str]]] = []
        if type(obj) is dict:
            for k, v in obj.items():
                children.append((k, [*path, f"<key {_safe_repr(k)}>"]))
                children.append((v, [*path, f"[{_safe_repr(k)}]"]))
        elif type(obj) in (set, frozenset):
            children = [(x, [*path, "<member>"]) for x in obj]
        else:
            children = [(x, [*path, f"[{i}]"]) for i, x in enumerate(obj)]
        stack.extend(reversed(children))
    return None


def _render(path: list[str] | None, names: dict[tuple[str, ...], str]) -> str:
    if path is None:
        return ""
    for prefix, name in names.items():
        if tuple(path[: len(prefix)]) == prefix:
            return " at " + name + "".join(path[len(prefix) :])
    return " at " + ("value" + "".join(path))


def _encode(obj: object, names: dict[tuple[str, ...], str]) -> bytes:
    try:
        return _enc(obj, 0)
    except _Refused as refused:
        where = _render(_find(obj, refused.obj), names)
        raise exceptions.KeyPicklingError(refused.obj, refused.reason + where) from None
    except RecursionError:
        # Only reachable when the caller's own stack is already nearly full.
        raise exceptions.KeyPicklingError(obj, "structure too deep to encode") from None


def encode(obj: object) -> bytes:
    """Canonical bytes of ``obj``; raises :class:`KeyPicklingError` for anything not encodable.

    Supported (exact types only): None, bool, int, float, str, bytes, and tuple,
    list, dict, set, frozenset of supported values, nested up to ``MAX_DEPTH``.
    """
    return _encode(obj, {})


def entry_digest(callee: str, isolation_key: str, params: object) -> str:
    """Hex SHA-256 naming the entry of ``callee(*params)`` under ``isolation_key``.

    ``params`` is usually ``(args_tuple, kwargs_dict)``; kwargs order does not matter.
    The digest is that of ``encode((callee, isolation_key, params))``; the hash state
    after the (callee, isolation key) prefix is cached, so a call encodes only params.
    """
    state = _prefix_states.get((callee, isolation_key))
    if state is None:
        if type(callee) is not str or type(isolation_key) is not str:
            _raise_for((callee, isolation_key, params))
        state = hashlib.sha256(
            _DIGEST_PREFIX + _head(_TUPLE, 3) + _enc_str(callee, 1) + _enc_str(isolation_key, 1)
        )
        if len(_prefix_states) < _PREFIX_CACHE_SIZE:
            _prefix_states[(callee, isolation_key)] = state
    try:
        data = _DISPATCH.get(type(params), _enc_refuse)(params, 1)
    except (_Refused, RecursionError):
        _raise_for((callee, isolation_key, params))
    digest = state.copy()
    digest.update(data)
    return digest.hexdigest()


_PREFIX_CACHE_SIZE = 4096
_prefix_states: dict[tuple[str, str], Any] = {}


def _raise_for(key: tuple[object, object, object]) -> NoReturn:
    """Encode the way that names where the bad value is; only reached for bad keys."""
    params = key[2]
    if type(params) is Bound:  # only its parameters can be bad: callee_of checked the rest
        params = params.params
        key = (key[0], key[1], params)
    names: dict[tuple[str, ...], str] = {}
    if (
        type(params) is tuple
        and len(params) == 2
        and type(params[0]) is tuple
        and type(params[1]) is dict
    ):
        names = {("[2]", "[0]"): "args", ("[2]", "[1]"): "kwargs"}
    names.update({("[0]",): "callee", ("[1]",): "isolation_key", ("[2]",): "params"})
    _encode(key, names)
    raise exceptions.KeyPicklingError(key, "cannot be encoded")  # _encode raised already


# --------------------------------------------------------------------------- results


def same_value(a: object, b: object) -> bool | None:
    """Whether two results are the same for a cache: equal canonical encodings.

    Stricter than ``==``: ``0.0`` and ``-0.0``, ``1`` and ``True``, ``{1}`` and
    ``{True}``, ``frozenset({1.0})`` and ``frozenset({1})`` all differ, since a
    caller could tell them apart. ``None`` when neither can be encoded (a pickled
    object, say): the caller must compare another way. One encodable and one not
    are different.
    """
    try:
        left: bytes | None = encode(a)
    except exceptions.KeyEncodingError:
        left = None
    try:
        right: bytes | None = encode(b)
    except exceptions.KeyEncodingError:
        right = None
    if left is None and right is None:
        return None
    return left == right
