"""Canonical key encoding: stable across processes, order-free, type-exact, injective."""

from __future__ import annotations

import collections
import enum
import hashlib
import inspect
import math
import os
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_cache import exceptions, keys

ROOT = Path(__file__).resolve().parents[1]
NAN_BITS = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"


# --- A type-aware model of values, and a parser of the encoding back into it ---


def canon(x: Any) -> Any:
    """Hashable, type-tagged form of a value: equal iff the values are type-exactly equal."""
    kind = type(x)
    if x is None:
        return ("N",)
    if kind is bool:
        return ("B", x)
    if kind is int:
        return ("i", x)
    if kind is float:
        return ("f", NAN_BITS if math.isnan(x) else struct.pack(">d", x))
    if kind is str:
        return ("s", x)
    if kind is bytes:
        return ("b", x)
    if kind is tuple:
        return ("t", tuple(canon(e) for e in x))
    if kind is list:
        return ("l", tuple(canon(e) for e in x))
    if kind is dict:
        return ("d", frozenset((canon(k), canon(v)) for k, v in x.items()))
    if kind is set:
        return ("e", frozenset(canon(e) for e in x))
    if kind is frozenset:
        return ("z", frozenset(canon(e) for e in x))
    raise TypeError(kind)


def parse(data: bytes, i: int = 0) -> tuple[Any, int]:
    """Independent decoder of the key format: proves the encoding loses nothing."""
    tag = data[i : i + 1]
    i += 1
    if tag == b"N":
        return ("N",), i
    if tag in (b"T", b"F"):
        return ("B", tag == b"T"), i
    if tag == b"i":
        return ("i", struct.unpack_from(">q", data, i)[0]), i + 8
    if tag == b"f":
        return ("f", data[i : i + 8]), i + 8
    (n,) = struct.unpack_from(">Q", data, i)
    i += 8
    if tag == b"I":
        value = int.from_bytes(data[i : i + n], "big", signed=True)
        assert not -(2**63) <= value < 2**63, "small ints must use the fixed form"
        return ("i", value), i + n
    if tag == b"s":
        return ("s", data[i : i + n].decode("utf-8", "surrogatepass")), i + n
    if tag == b"b":
        return ("b", data[i : i + n]), i + n
    items: list[Any] = []
    for _ in range(n):
        item, i = parse(data, i)
        if tag == b"d":
            value, i = parse(data, i)
            item = (item, value)
        items.append(item)
    if tag == b"t":
        return ("t", tuple(items)), i
    if tag == b"l":
        return ("l", tuple(items)), i
    if tag in (b"d", b"e", b"z"):
        return (tag.decode(), frozenset(items)), i
    raise AssertionError(f"unknown tag {tag!r}")


def parse_all(data: bytes) -> Any:
    value, end = parse(data)
    assert end == len(data)
    return value


def rebuild(x: Any) -> Any:
    """An equal copy built differently: dicts and sets filled in reverse order."""
    kind = type(x)
    if kind is tuple:
        return tuple(rebuild(e) for e in x)
    if kind is list:
        return [rebuild(e) for e in x]
    if kind is dict:
        return {rebuild(k): rebuild(v) for k, v in reversed(list(x.items()))}
    if kind is set:
        return {rebuild(e) for e in reversed(list(x))}
    if kind is frozenset:
        return frozenset(rebuild(e) for e in reversed(list(x)))
    if kind is str:
        return "".join(list(x))  # a new object where CPython allows
    if kind is bytes:
        return bytes(bytearray(x))
    return x


# --- Strategies ---

texts = st.text(max_size=8) | st.text(
    alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(),
    max_size=4,
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-3, max_value=3)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
    | st.binary(max_size=8)
)
hashables = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=15,
)


# --- Properties ---


@settings(deadline=None, max_examples=500)
@given(values)
def test_encoding_decodes_back_to_the_same_typed_value(x: Any) -> None:
    assert parse_all(keys.encode(x)) == canon(x)


@settings(deadline=None, max_examples=500)
@given(values)
def test_encoding_ignores_construction_order(x: Any) -> None:
    assert keys.encode(rebuild(x)) == keys.encode(x)


@settings(deadline=None, max_examples=500)
@given(values, values)
def test_different_values_encode_differently(x: Any, y: Any) -> None:
    if canon(x) != canon(y):
        assert keys.encode(x) != keys.encode(y)
    else:
        assert keys.encode(x) == keys.encode(y)


# --- Stability across processes ---

HASHSEED_SCRIPT = """
from redis_cache import keys
words = [f"word{i}" for i in range(64)]
values = [
    set(words),
    frozenset(w.encode() for w in words),
    {w: i for i, w in enumerate(words)},
    {frozenset(words[:5]): {w: set(words[:3]) for w in words[:9]}},
]
for v in values:
    print(keys.encode(v).hex())
print(keys.entry_digest("pkg.f", "iso", ((set(words),), {w: w for w in words})))
"""


def run_with_hashseed(seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", HASHSEED_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.split()


def test_identical_across_hash_seeds() -> None:
    one = run_with_hashseed("1")
    two = run_with_hashseed("2")
    assert len(one) == 5
    assert one == two
    words = [f"word{i}" for i in range(64)]
    assert one[0] == keys.encode(set(words)).hex()


def test_golden_encoding_is_pinned() -> None:
    # Changing these bytes changes every key in every deployed cache.
    value: tuple[Any, ...] = (None, True, False, -1, 2**64, 1.5, "é", b"\x00")
    value += ([], {}, set(), frozenset())
    assert keys.encode(value).hex() == (
        "74000000000000000c4e5446"
        "69ffffffffffffffff"
        "4900000000000000090100000000000000"
        "00663ff8000000000000"
        "730000000000000002c3a9"
        "62000000000000000100"
        "6c0000000000000000"
        "640000000000000000"
        "650000000000000000"
        "7a0000000000000000"
    )
    params = ((1, "a"), {"k": "v", "j": [1.0]})
    expected = hashlib.sha256(
        b"redis_cache/key/v1\0" + keys.encode(("pkg.mod.fn", "iso", params))
    ).hexdigest()
    assert keys.entry_digest("pkg.mod.fn", "iso", params) == expected
    assert expected == keys.entry_digest("pkg.mod.fn", "iso", ((1, "a"), {"j": [1.0], "k": "v"}))


# --- Order independence and type separation ---


def test_kwargs_and_dict_order_do_not_matter() -> None:
    a = keys.entry_digest("f", "iso", ((1,), {"a": 1, "b": {"x": 1, "y": 2}}))
    b = keys.entry_digest("f", "iso", ((1,), {"b": {"y": 2, "x": 1}, "a": 1}))
    assert a == b
    assert keys.encode({1, 2, 3}) == keys.encode({3, 2, 1})


def test_digest_depends_on_every_part() -> None:
    base = keys.entry_digest("f", "iso", ((1,), {}))
    assert len(base) == 64
    assert keys.entry_digest("g", "iso", ((1,), {})) != base
    assert keys.entry_digest("f", "other", ((1,), {})) != base
    assert keys.entry_digest("f", "iso", ((2,), {})) != base
    assert keys.entry_digest("f", "iso", ((1,), {"a": 1})) != base


def test_types_are_kept_apart() -> None:
    distinct = [
        1,
        1.0,
        True,
        "1",
        b"1",
        (1,),
        [1],
        {1},
        frozenset({1}),
        {1: None},
        {True: None},
        {1.0: None},
        0,
        0.0,
        -0.0,
        False,
        None,
        "",
        b"",
        (),
        [],
        {},
        set(),
        frozenset(),
        2**63,
        -(2**63) - 1,
        ((),),
        ([],),
        [()],
    ]
    encodings = [keys.encode(v) for v in distinct]
    assert len(set(encodings)) == len(distinct)


def test_every_nan_encodes_alike() -> None:
    payload_nan = struct.unpack(">d", b"\x7f\xf0\x00\x00\x00\x00\x00\x01")[0]
    nans = [float("nan"), -float("nan"), payload_nan, math.inf - math.inf]
    assert len({keys.encode(n) for n in nans}) == 1
    assert keys.encode({float("nan"): 1, float("nan"): 2}) == keys.encode(
        {float("nan"): 2, float("nan"): 1}
    )


def test_lone_surrogates_are_encoded() -> None:
    assert keys.encode("\udc80") != keys.encode("\udc81")
    assert parse_all(keys.encode("a\ud800b")) == ("s", "a\ud800b")


# --- Refusals ---


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyTuple(tuple[int, ...]):
    pass


Pair = collections.namedtuple("Pair", "x y")


@pytest.mark.parametrize(
    "value",
    [
        object(),
        bytearray(b"x"),
        memoryview(b"x"),
        1j,
        Decimal(1),
        Color.RED,
        MyStr("x"),
        MyTuple((1,)),
        collections.OrderedDict(a=1),
        collections.defaultdict(list),
        Pair(1, 2),
        range(3),
        len,
        int,
        ...,
    ],
    ids=lambda v: type(v).__qualname__,
)
def test_unsupported_types_are_refused(value: object) -> None:
    with pytest.raises(exceptions.KeyPicklingError) as info:
        keys.encode(value)
    assert isinstance(info.value, exceptions.KeyEncodingError)
    assert isinstance(info.value, exceptions.UserError)
    assert info.value.key_type is type(value)
    assert type(value).__qualname__ in str(info.value)
    # ...also when nested
    with pytest.raises(exceptions.KeyPicklingError):
        keys.encode([1, {"k": (2, value)}])


def test_error_names_where_the_value_is() -> None:
    with pytest.raises(exceptions.KeyPicklingError) as info:
        keys.entry_digest("f", "iso", ((1, {"x": object()}), {}))
    assert "object" in str(info.value)
    assert "args[1]['x']" in str(info.value)
    with pytest.raises(exceptions.KeyPicklingError) as info:
        keys.entry_digest("f", "iso", ((), {"opt": [1, bytearray()]}))
    assert "kwargs['opt'][1]" in str(info.value)
    with pytest.raises(exceptions.KeyPicklingError) as info:
        keys.encode({"a": [0, {1.5}, {object()}]})
    assert "value['a'][2]<member>" in str(info.value)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_limit() -> None:
    keys.encode(nested(keys.MAX_DEPTH))
    with pytest.raises(exceptions.KeyPicklingError, match="nested deeper"):
        keys.encode(nested(keys.MAX_DEPTH + 1))


def test_cycles_are_refused() -> None:
    a: list[Any] = [1]
    a.append(a)
    d: dict[str, Any] = {}
    d["self"] = [d]
    for value in (a, d, (1, [a])):
        with pytest.raises(exceptions.KeyPicklingError):
            keys.encode(value)


def test_recursion_error_never_escapes() -> None:
    old = sys.getrecursionlimit()
    value = nested(150)
    try:
        sys.setrecursionlimit(len(inspect.stack()) + 40)
        with pytest.raises(exceptions.KeyPicklingError):
            keys.encode(value)
    finally:
        sys.setrecursionlimit(old)
