"""The value envelope: exact round trips, integrity, signing, bounded decompression."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import hashlib
import hmac
import math
import os
import pickle
import random
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redis_cache import codec, exceptions
from redis_cache import values as exact_values
from redis_cache.codec import Codec, read_header

SECRET = b"test-secret-0123456789abcdef"
OTHER_SECRET = b"another-secret-0123456789abcd"
KEY = hashlib.sha256(b"entry").hexdigest().encode()
OTHER_KEY = hashlib.sha256(b"other entry").hexdigest().encode()

PLAIN = Codec()
SIGNED = Codec(secret=SECRET)
NAN_BITS = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"



def canon(x: Any) -> Any:
    """Hashable, type-tagged form of a value: equal iff the values are type-exactly equal."""
    kind = type(x)
    if kind in (type(None), bool, int, str, bytes):
        return (kind.__name__, x)
    if kind is float:
        return ("float", NAN_BITS if math.isnan(x) else struct.pack(">d", x))
    if kind in (tuple, list):
        return (kind.__name__, tuple(canon(e) for e in x))
    if kind is dict:
        return ("dict", frozenset((canon(k), canon(v)) for k, v in x.items()))
    if kind in (set, frozenset):
        return (kind.__name__, frozenset(canon(e) for e in x))
    raise TypeError(kind)


def roundtrip(c: Codec, value: Any) -> Any:
    return c.decode(KEY, c.encode(KEY, value))


def envelope(
    codec_id: int,
    payload: bytes,
    *,
    flags: int = 0,
    raw_length: int | None = None,
    key: bytes = KEY,
    secret: bytes | None = None,
) -> bytes:
    """Hand-build an envelope the way the format documents it (independent of Codec)."""
    if secret is not None:
        flags |= codec.FLAG_SIGNED
    length = len(payload) if raw_length is None else raw_length
    header = struct.pack(">2sBBBQ", b"RC", 1, codec_id, flags, length)
    if secret is not None:
        tag = hmac.new(secret, key + header + payload, "sha256").digest()
    else:
        tag = xxhash.xxh3_64_digest(key + header + payload)
    return header + tag + payload


# --- Layout ---


def test_unsigned_layout_is_as_documented() -> None:
    blob = Codec(compression="off").encode(KEY, b"hello")
    assert blob[:2] == b"RC"
    assert blob[2] == 1
    assert blob[3] == codec.CODEC_RAW
    assert blob[4] == 0
    assert blob[5:13] == (5).to_bytes(8, "big")
    assert blob[13:21] == xxhash.xxh3_64_digest(KEY + blob[:13] + b"hello")
    assert blob[21:] == b"hello"
    assert blob == envelope(codec.CODEC_RAW, b"hello")


def test_signed_layout_is_as_documented() -> None:
    blob = Codec(SECRET, compression="off").encode(KEY, b"hello")
    assert blob[4] == codec.FLAG_SIGNED
    assert blob[13:45] == hmac.new(SECRET, KEY + blob[:13] + b"hello", "sha256").digest()
    assert blob[45:] == b"hello"
    header = read_header(blob)
    assert header == codec.Header(version=1, codec=0, flags=codec.FLAG_SIGNED, raw_length=5)
    assert header.signed and not header.compressed and header.compression is None
    assert header.codec_name == "raw"
    assert header.payload_offset == 45


def test_codec_ids() -> None:
    assert read_header(PLAIN.encode(KEY, b"x")).codec == codec.CODEC_RAW
    assert read_header(PLAIN.encode(KEY, [b"x"])).codec == codec.CODEC_MSGPACK
    assert read_header(SIGNED.encode(KEY, {1, 2})).codec == codec.CODEC_MSGPACK
    assert read_header(SIGNED.encode(KEY, Point(1, 2))).codec == codec.CODEC_PICKLE
    assert read_header(SIGNED.encode(KEY, Point(1, 2))).codec_name == "pickle"


# --- Round trips ---

SAMPLE: dict[Any, Any] = {
    (1, "a"): [(1, 2), {3, 4}, frozenset({5}), [(b"x", ((),))]],
    2**200: -(2**200),
    2**64 - 1: 2**64,
    -(2**63): -(2**63) - 1,
    "bytes": b"\x00\xff",
    "str": "héllo \U0001f600",
    "surrogate": "lone \udc80 and pair \ud83d\ude00",
    None: True,
    False: 0,
    1.5: -0.0,
    "floats": [math.inf, -math.inf, float("nan"), 5e-324, 0.1],
    frozenset({(1, 2)}): {(b"x", None)},
    (): [],
    "empty": [(), [], {}, set(), frozenset(), b"", ""],
}


@pytest.mark.parametrize("c", [PLAIN, SIGNED], ids=["plain", "signed"])
@pytest.mark.parametrize(
    "value",
    [
        SAMPLE,
        b"",
        b"raw bytes",
        os.urandom(10_000),
        None,
        True,
        0,
        2**64,
        -(2**200),
        1.0,
        -0.0,
        "text",
        "\udc80",
        (1,),
        [1],
        {1},
        frozenset({1}),
        [[[(1, [2, (3, {4: (5,)})])]]],
    ],
    ids=repr,
)
def test_round_trip_keeps_exact_types(c: Codec, value: Any) -> None:
    assert canon(roundtrip(c, value)) == canon(value)


def test_float_bits_survive() -> None:
    odd_nan = struct.unpack(">d", b"\x7f\xf0\x00\x00\x00\x00\x00\x01")[0]
    back = roundtrip(PLAIN, [odd_nan, -0.0])
    assert struct.pack(">d", back[0]) == struct.pack(">d", odd_nan)
    assert math.copysign(1.0, back[1]) == -1.0


texts = st.text() | st.text(
    alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(),
    max_size=6,
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True)
    | texts
    | st.binary()
)
hashables = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(hashables, inner, max_size=5)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=25,
)
codecs = st.sampled_from(
    [PLAIN, SIGNED, Codec(compression="zlib"), Codec(SECRET, compression="off")]
)


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(codecs, values)
def test_round_trip_property(c: Codec, value: Any) -> None:
    assert canon(roundtrip(c, value)) == canon(value)


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Color(enum.IntEnum):
    RED = 1


Pair = collections.namedtuple("Pair", "x y")


def test_custom_class_round_trips_with_secret() -> None:
    value = {"p": Point(1, 2), "c": Color.RED, "od": collections.OrderedDict(a=1)}
    back = roundtrip(SIGNED, value)
    assert back == value
    assert type(back["c"]) is Color
    assert type(back["od"]) is collections.OrderedDict


def test_cycles_round_trip_with_secret_only() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    back = roundtrip(SIGNED, cyclic)
    assert back[1] is back
    with pytest.raises(exceptions.UnsupportedValueError):
        PLAIN.encode(KEY, cyclic)


def test_wire_form_of_containers() -> None:
    # [ext 1 marker, items...] is a tuple; ext 2 a set; ext 3 a frozenset.
    raw = Codec(compression="off").encode(KEY, [(1, "a"), {2}, frozenset({3}), 2**64])
    assert msgpack.unpackb(raw[21:]) == [
        [TUPLE_MARK, 1, "a"],
        [SET_MARK, 2],
        [msgpack.ExtType(exact_values.EXT_FROZENSET, b""), 3],
        msgpack.ExtType(exact_values.EXT_BIGINT, b"\x01" + bytes(8)),
    ]


@pytest.mark.parametrize("depth", [100, 400, 3000])
@pytest.mark.parametrize("make", [tuple, list], ids=["tuples", "lists"])
def test_deep_nesting_never_leaks_recursion_error(depth: int, make: Any) -> None:
    value: Any = make()
    for _ in range(depth):
        value = make([value, 1])
    for c in (PLAIN, SIGNED):
        try:
            blob = c.encode(KEY, value)
        except (exceptions.UnsupportedValueError, exceptions.ValuePicklingError):
            continue
        try:
            back = c.decode(KEY, blob)
        except exceptions.ValueDecodingError:
            continue
        assert type(back) is make


@pytest.mark.parametrize(
    "value",
    [
        Point(1, 2),
        Color.RED,
        collections.OrderedDict(a=1),
        Pair(1, 2),
        bytearray(b"x"),
        msgpack.ExtType(1, b"\x90"),
        [1, {"k": (bytearray(b"x"),)}],
        {1: {2: [Color.RED]}},
        1j,
    ],
    ids=lambda v: type(v).__qualname__,
)
def test_inexact_values_need_a_secret(value: Any) -> None:
    with pytest.raises(exceptions.UnsupportedValueError) as info:
        PLAIN.encode(KEY, value)
    assert isinstance(info.value, exceptions.ValueEncodingError)
    assert isinstance(info.value, exceptions.UserError)
    assert "REDIS_CACHE_SECRET" in str(info.value)
    assert "custom result encoder" in str(info.value)
    blob = SIGNED.encode(KEY, value)
    assert read_header(blob).codec == codec.CODEC_PICKLE
    back = SIGNED.decode(KEY, blob)
    assert type(back) is type(value)


def holds_inexact(x: Any) -> bool:
    kind = type(x)
    if kind in (list, tuple, set, frozenset):
        return any(holds_inexact(e) for e in x)
    if kind is dict:
        return any(holds_inexact(k) or holds_inexact(v) for k, v in x.items())
    return kind not in (type(None), bool, int, float, str, bytes)


mixed_values = st.recursive(
    leaves | st.builds(bytearray, st.binary(max_size=3)) | st.just(Color.RED),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(deadline=None, max_examples=300)
@given(mixed_values)
def test_any_inexact_item_anywhere_is_caught(value: Any) -> None:
    if holds_inexact(value):
        with pytest.raises(exceptions.UnsupportedValueError):
            PLAIN.encode(KEY, value)
        assert read_header(SIGNED.encode(KEY, value)).codec == codec.CODEC_PICKLE
    else:
        assert canon(roundtrip(PLAIN, value)) == canon(value)


def test_unpicklable_value() -> None:
    with pytest.raises(exceptions.ValuePicklingError) as info:
        SIGNED.encode(KEY, threading.Lock())
    assert isinstance(info.value, exceptions.ValueEncodingError)
    with pytest.raises(exceptions.UnsupportedValueError):
        PLAIN.encode(KEY, memoryview(b"x"))  # msgpack would turn it into bytes
    with pytest.raises(exceptions.ValuePicklingError):
        SIGNED.encode(KEY, memoryview(b"x"))
    with pytest.raises(exceptions.ValuePicklingError):
        SIGNED.encode(KEY, [lambda: 1])


def test_verified_pickle_that_cannot_load() -> None:
    payload = b"cno_such_module_xyz\nThing\n."  # protocol 0 GLOBAL opcode
    blob = envelope(codec.CODEC_PICKLE, payload, secret=SECRET)
    with pytest.raises(exceptions.ValueUnPicklingError):
        SIGNED.decode(KEY, blob)


# --- Integrity and binding ---


def test_entry_is_bound_to_its_key() -> None:
    blob = PLAIN.encode(KEY, {"a": 1})
    with pytest.raises(exceptions.CorruptEntryError):
        PLAIN.decode(OTHER_KEY, blob)
    blob = SIGNED.encode(KEY, {"a": 1})
    with pytest.raises(exceptions.UnverifiedEntryError):
        SIGNED.decode(OTHER_KEY, blob)


def test_acceptance_rule() -> None:
    unsigned = PLAIN.encode(KEY, [1])
    signed = SIGNED.encode(KEY, [1])
    other = Codec(OTHER_SECRET).encode(KEY, [1])
    assert read_header(signed).signed and not read_header(unsigned).signed
    assert PLAIN.decode(KEY, unsigned) == [1]
    assert SIGNED.decode(KEY, signed) == [1]
    for c, blob in [(PLAIN, signed), (SIGNED, unsigned), (SIGNED, other), (PLAIN, other)]:
        with pytest.raises(exceptions.UnverifiedEntryError):
            c.decode(KEY, blob)


def test_every_entry_written_with_a_secret_is_signed() -> None:
    for value in (b"x", b"x" * 100_000, [1], None, Point(1, 2)):
        assert read_header(SIGNED.encode(KEY, value)).signed


def mutations(blob: bytes) -> list[tuple[int, bytes]]:
    """Each position with three different replacement bytes."""
    out = []
    for i in range(len(blob)):
        for delta in (0x01, 0x04, 0xFF):
            out.append((i, blob[:i] + bytes([blob[i] ^ delta]) + blob[i + 1 :]))
    return out


def claims_signed(blob: bytes) -> bool:
    try:
        return read_header(blob).signed
    except exceptions.CorruptEntryError:
        return False


TAMPER_VALUES = [b"payload bytes", {"k": [1, (2, 3)]}, b"compressible " * 400]


@pytest.mark.parametrize("value", TAMPER_VALUES, ids=["raw", "msgpack", "zlib"])
def test_tampering_unsigned_is_corrupt(value: Any) -> None:
    blob = PLAIN.encode(KEY, value)
    for i, bad in mutations(blob):
        with pytest.raises(exceptions.ValueDecodingError) as info:
            PLAIN.decode(KEY, bad)
        if claims_signed(bad):
            # Flipping the "signed" bit makes a claimed *signed* entry: unverifiable
            # without a secret, so a miss (never read, never executed), not corrupt.
            assert i == 4
            assert type(info.value) is exceptions.UnverifiedEntryError
        else:
            assert type(info.value) is exceptions.CorruptEntryError, i
    for n in range(len(blob)):
        with pytest.raises(exceptions.CorruptEntryError):
            PLAIN.decode(KEY, blob[:n])
    with pytest.raises(exceptions.CorruptEntryError):
        PLAIN.decode(KEY, blob + b"\x00")


@pytest.mark.parametrize("value", [*TAMPER_VALUES, Point(3, 4)], ids=["raw", "mp", "zlib", "pkl"])
def test_tampering_signed(value: Any) -> None:
    """Decided: a changed tag or payload is UnverifiedEntryError (indistinguishable from
    another fleet's secret); a header that no longer parses is CorruptEntryError."""
    blob = SIGNED.encode(KEY, value)
    for i, bad in mutations(blob):
        with pytest.raises(exceptions.ValueDecodingError) as info:
            SIGNED.decode(KEY, bad)
        assert SECRET.decode() not in str(info.value)
        if i >= codec.HEADER_SIZE:
            assert type(info.value) is exceptions.UnverifiedEntryError, i
        else:
            assert type(info.value) in (
                exceptions.UnverifiedEntryError,
                exceptions.CorruptEntryError,
            ), i
    for n in range(len(blob)):
        with pytest.raises((exceptions.CorruptEntryError, exceptions.UnverifiedEntryError)):
            SIGNED.decode(KEY, blob[:n])


# --- Planted pickles ---


class Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_planted_pickle_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Planted(marker), protocol=5)
    unsigned = envelope(codec.CODEC_PICKLE, payload)
    wrong_hmac = envelope(codec.CODEC_PICKLE, payload, secret=OTHER_SECRET)
    garbage_hmac = bytearray(envelope(codec.CODEC_PICKLE, payload, secret=SECRET))
    garbage_hmac[20] ^= 0x55
    for c in (PLAIN, SIGNED):
        with pytest.raises(exceptions.CorruptEntryError):
            c.decode(KEY, unsigned)
        for blob in (wrong_hmac, bytes(garbage_hmac)):
            with pytest.raises(exceptions.UnverifiedEntryError):
                c.decode(KEY, blob)
    with pytest.raises(exceptions.UnverifiedEntryError):
        SIGNED.decode(OTHER_KEY, envelope(codec.CODEC_PICKLE, payload, secret=SECRET))
    assert not marker.exists()
    # Control: signed with our secret it *does* run, so the test above means something.
    opened = SIGNED.decode(KEY, envelope(codec.CODEC_PICKLE, payload, secret=SECRET))
    opened.close()  # type: ignore[attr-defined]
    assert marker.exists()


# --- Compression ---


def compressible(size: int) -> bytes:
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"object.o "]
    out = bytearray()
    i = 0
    while len(out) < size:
        out += words[(i * 7 + i // 3) % 5]
        i += 1
    return bytes(out[:size])


@pytest.mark.parametrize(("mode", "algorithm"), [("auto", "zstd"), ("zstd", "zstd"),
                                                 ("zlib", "zlib")])  # fmt: skip
def test_compressible_megabyte_is_compressed(mode: str, algorithm: str) -> None:
    data = compressible(1 << 20)
    c = Codec(compression=mode)  # type: ignore[arg-type]
    blob = c.encode(KEY, data)
    header = read_header(blob)
    assert header.compression == algorithm and header.compressed
    assert header.raw_length == len(data)
    assert len(blob) < len(data) // 4
    assert c.decode(KEY, blob) == data
    assert PLAIN.decode(KEY, blob) == data  # readers need no setting


@pytest.mark.parametrize("mode", ["auto", "zlib", "zstd", "off"])
def test_random_megabyte_is_not_compressed(mode: str) -> None:
    data = os.urandom(1 << 20)
    blob = Codec(compression=mode).encode(KEY, data)  # type: ignore[arg-type]
    assert not read_header(blob).compressed
    assert len(blob) == len(data) + 21


def test_compression_thresholds_and_off() -> None:
    data = compressible(1000)
    assert not read_header(Codec(compression="auto").encode(KEY, data)).compressed
    assert not read_header(Codec(compression="auto").encode(KEY, compressible(16_000))).compressed
    assert read_header(Codec(compression="auto").encode(KEY, compressible(17_000))).compressed
    assert read_header(Codec(compression="zlib").encode(KEY, data)).compressed
    assert read_header(Codec(compression="zstd").encode(KEY, data)).compressed
    assert not read_header(Codec(compression="zlib").encode(KEY, data[:500])).compressed
    big = compressible(1 << 20)
    assert not read_header(Codec(compression="off").encode(KEY, big)).compressed
    # msgpack payloads are compressed too...
    rng = random.Random(3)  # shrinks ~3.2x: compressed, and within what readers accept
    names = [f"{rng.choice(['matmul', 'conv', 'gelu'])}_{rng.randint(0, 99999)}_"
             f"{rng.randint(0, 64)}" for _ in range(5000)]  # fmt: skip
    blob = PLAIN.encode(KEY, names)
    assert read_header(blob).compressed
    assert PLAIN.decode(KEY, blob) == names
    # Hex digests shrink to ~1/2 only: reading them raw costs less than inflating them.
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]
    assert not read_header(PLAIN.encode(KEY, digests)).compressed
    assert read_header(Codec(compression="zstd").encode(KEY, digests)).compressed
    # ...but an unsigned one only as far as readers accept it (they refuse more
    # than UNSIGNED_MAX_INFLATION); a signed one is trusted to inflate as it likes.
    blob = PLAIN.encode(KEY, [big.decode()] * 2)
    assert not read_header(blob).compressed
    assert PLAIN.decode(KEY, blob) == [big.decode()] * 2
    blob = SIGNED.encode(KEY, [big.decode()] * 2)
    assert read_header(blob).compressed
    assert SIGNED.decode(KEY, blob) == [big.decode()] * 2


def test_auto_looks_at_the_whole_payload() -> None:
    # Random head, compressible rest: compressed; half random: kept raw.
    data = os.urandom(16 * 1024) + compressible(4 << 20)
    assert read_header(Codec(compression="auto").encode(KEY, data)).compressed
    half = os.urandom(1 << 20) + compressible(1 << 20)
    assert not read_header(Codec(compression="auto").encode(KEY, half)).compressed


def test_zstd_round_trip_and_bomb() -> None:
    import zstandard  # noqa: PLC0415 - a test dependency; its absence must fail, not skip
    data = compressible(1 << 20)
    c = Codec(SECRET, compression="zstd")
    blob = c.encode(KEY, data)
    assert read_header(blob).compression == "zstd"
    assert c.decode(KEY, blob) == data
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    for raw_length in (10, (64 << 20) - 1, (64 << 20) + 1):
        blob = envelope(codec.CODEC_RAW, bomb, flags=codec.FLAG_ZSTD, raw_length=raw_length)
        with pytest.raises(exceptions.CorruptEntryError):
            PLAIN.decode(KEY, blob)
    good = envelope(codec.CODEC_RAW, bomb, flags=codec.FLAG_ZSTD, raw_length=64 << 20)
    assert PLAIN.decode(KEY, good) == bytes(64 << 20)


def test_decompression_bomb_is_refused_without_allocating() -> None:
    huge = 256 << 20
    inflater = zlib.compressobj(9)
    bomb = b"".join(inflater.compress(bytes(1 << 20)) for _ in range(huge >> 20))
    bomb += inflater.flush()
    assert len(bomb) < 1 << 20
    blob = envelope(codec.CODEC_RAW, bomb, flags=codec.FLAG_ZLIB, raw_length=1000)
    tracemalloc.start()
    try:
        with pytest.raises(exceptions.CorruptEntryError):
            PLAIN.decode(KEY, blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_declared_length_must_match() -> None:
    data = compressible(10_000)
    packed = zlib.compress(data)
    for raw_length in (0, len(data) - 1, len(data) + 1):
        blob = envelope(codec.CODEC_RAW, packed, flags=codec.FLAG_ZLIB, raw_length=raw_length)
        with pytest.raises(exceptions.CorruptEntryError):
            PLAIN.decode(KEY, blob)
    zlib_flag = codec.FLAG_ZLIB
    good = envelope(codec.CODEC_RAW, packed, flags=zlib_flag, raw_length=len(data))
    assert PLAIN.decode(KEY, good) == data
    trailing = envelope(codec.CODEC_RAW, packed + b"junk", flags=zlib_flag, raw_length=len(data))
    with pytest.raises(exceptions.CorruptEntryError):
        PLAIN.decode(KEY, trailing)
    for raw_length in (4, 6):
        with pytest.raises(exceptions.CorruptEntryError):
            PLAIN.decode(KEY, envelope(codec.CODEC_RAW, b"hello", raw_length=raw_length))
    with pytest.raises(exceptions.CorruptEntryError, match="exceeds"):
        read_header(envelope(codec.CODEC_RAW, b"", raw_length=(1 << 30) + 1))


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "truncated"),
        (b"RC", "truncated"),
        (b"XX" + envelope(0, b"x")[2:], "magic"),
        (envelope(0, b"x")[:2] + b"\x02" + envelope(0, b"x")[3:], "version"),
        (envelope(3, b"x"), "codec"),
        (envelope(0, b"x", flags=0x08), "flag"),
        (envelope(0, b"x", flags=0x03), "both"),
        (envelope(0, b"x")[:15], "truncated"),
    ],
)
def test_bad_headers(blob: bytes, reason: str) -> None:
    with pytest.raises(exceptions.CorruptEntryError, match=reason):
        read_header(blob)
    with pytest.raises(exceptions.CorruptEntryError, match=reason):
        PLAIN.decode(KEY, blob)


TUPLE_MARK = msgpack.ExtType(exact_values.EXT_TUPLE, b"")
SET_MARK = msgpack.ExtType(exact_values.EXT_SET, b"")


def test_msgpack_garbage_with_valid_checksum() -> None:
    cases = [
        b"\xc1",  # never-used byte
        b"\x91",  # truncated array
        b"\x01\x02",  # extra data
        msgpack.packb(msgpack.ExtType(9, b"")),  # unknown extension
        msgpack.packb(msgpack.ExtType(1, b"\x01")),  # marker with a payload
        msgpack.packb(TUPLE_MARK),  # marker at top level
        msgpack.packb([1, TUPLE_MARK]),  # marker not first
        msgpack.packb([TUPLE_MARK, TUPLE_MARK]),  # second marker not first
        msgpack.packb({"k": TUPLE_MARK}),  # marker as a map value
        msgpack.packb({TUPLE_MARK: 1}),  # marker as a map key
        msgpack.packb([SET_MARK, [1]]),  # set of an unhashable list
        msgpack.packb({(1,): 2}, default=lambda o: msgpack.ExtType(5, b"")),
        b"\x91" * 100_000 + b"\xc0",  # nesting beyond msgpack's limit
        b"\x92\xc7\x00\x01" * 100_000 + b"\xc0",  # tuples as deep, no crash
        b"\x81\x90\x01",  # map with a list key
        b"\xa2\xff\xfe",  # invalid UTF-8
    ]
    for payload in cases:
        with pytest.raises(exceptions.CorruptEntryError):
            PLAIN.decode(KEY, envelope(codec.CODEC_MSGPACK, payload))


def test_inputs_of_other_buffer_types() -> None:
    blob = PLAIN.encode(KEY, [1, b"x"])
    assert PLAIN.decode(KEY, bytearray(blob)) == [1, b"x"]
    assert PLAIN.decode(KEY, memoryview(blob)) == [1, b"x"]
    assert PLAIN.decode(KEY, memoryview(b"..." + blob)[3:]) == [1, b"x"]
    assert read_header(bytearray(blob)).codec == codec.CODEC_MSGPACK
    with pytest.raises(exceptions.CorruptEntryError):
        PLAIN.decode(KEY, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(exceptions.CorruptEntryError):
        PLAIN.decode(KEY, memoryview(blob)[::2])


# --- Fuzzing: decode raises only ValueDecodingError, whatever the bytes ---


def decode_or_decoding_error(c: Codec, blob: bytes) -> None:
    with contextlib.suppress(exceptions.ValueDecodingError):
        c.decode(KEY, blob)


@settings(deadline=None, max_examples=1000)
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: b"RC\x01" + b))
def test_fuzz_random_bytes(blob: bytes) -> None:
    decode_or_decoding_error(PLAIN, blob)
    decode_or_decoding_error(SIGNED, blob)


@settings(deadline=None, max_examples=1000)
@given(
    st.integers(min_value=0, max_value=2),
    st.integers(min_value=0, max_value=255),
    st.binary(max_size=300),
)
def test_fuzz_payloads_with_valid_checksums(codec_id: int, flags: int, payload: bytes) -> None:
    # A valid checksum gets garbage past the integrity check into msgpack/zlib.
    flags &= codec.FLAG_ZLIB | codec.FLAG_SIGNED
    secret = SECRET if flags & codec.FLAG_SIGNED else None
    blob = envelope(codec_id, payload, flags=flags & ~codec.FLAG_SIGNED, secret=secret)
    decode_or_decoding_error(PLAIN, blob)
    if codec_id != codec.CODEC_PICKLE:  # a signed pickle is trusted by design
        decode_or_decoding_error(SIGNED, blob)


@settings(deadline=None, max_examples=300)
@given(values)
def test_fuzz_msgpack_mutations_with_valid_checksums(value: Any) -> None:
    payload = Codec(compression="off").encode(KEY, value)[21:]
    for i in range(len(payload)):
        bad = payload[:i] + bytes([payload[i] ^ 0x5A]) + payload[i + 1 :]
        decode_or_decoding_error(PLAIN, envelope(codec.CODEC_MSGPACK, bad))
        decode_or_decoding_error(PLAIN, envelope(codec.CODEC_MSGPACK, payload[:i]))


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(codecs, values, st.data())
def test_fuzz_mutated_and_truncated_envelopes(c: Codec, value: Any, data: st.DataObject) -> None:
    blob = c.encode(KEY, value)
    i = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != blob[i]))
    mutated = blob[:i] + bytes([new]) + blob[i + 1 :]
    with pytest.raises(exceptions.ValueDecodingError):
        c.decode(KEY, mutated)
    with pytest.raises(exceptions.ValueDecodingError):
        c.decode(KEY, blob[: data.draw(st.integers(min_value=0, max_value=len(blob) - 1))])


# --- Large values (threaded checksum paths) ---


@pytest.mark.parametrize("c", [PLAIN, SIGNED, Codec(compression="off")], ids=repr)
def test_large_raw_values(c: Codec) -> None:
    data = os.urandom(9 << 20)
    blob = c.encode(KEY, data)
    assert c.decode(KEY, blob) == data
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises((exceptions.CorruptEntryError, exceptions.UnverifiedEntryError)):
        c.decode(KEY, bad)
    with pytest.raises((exceptions.CorruptEntryError, exceptions.UnverifiedEntryError)):
        c.decode(OTHER_KEY, blob)


# --- Construction ---


def test_bad_settings_are_refused() -> None:
    with pytest.raises(exceptions.InvalidSettingError):
        Codec(secret=b"")
    with pytest.raises(exceptions.InvalidSettingError):
        Codec(compression="lz4")  # type: ignore[arg-type]


def test_repr_hides_the_secret() -> None:
    assert SECRET.decode() not in repr(SIGNED)
    assert "signed=True" in repr(SIGNED)
    assert SIGNED.signed and not PLAIN.signed
    assert PLAIN.compression == "auto"


def test_too_large_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_RAW_LENGTH", 100)
    with pytest.raises(exceptions.ValueTooLargeError):
        PLAIN.encode(KEY, b"x" * 101)


# --- What an unsigned entry may cost a reader (issue 9, item 17) ---

EMPTY_MAPS = 1 << 20  # msgpack: 1 byte each; Python: a 64-byte dict each


def empty_maps(count: int = EMPTY_MAPS) -> bytes:
    return b"\xdd" + struct.pack(">I", count) + b"\x80" * count


def peak_memory(fn: Any) -> tuple[int, BaseException | None]:
    """Peak bytes Python allocated while ``fn`` ran, and what it raised."""
    tracemalloc.start()
    try:
        fn()
    except Exception as exc:  # reported to the caller
        error: BaseException | None = exc
    else:
        error = None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


def test_a_planted_compressed_entry_cannot_inflate_into_gigabytes() -> None:
    raw = empty_maps()
    stored = zlib.compress(raw, 9)
    assert len(stored) < len(raw) // 500  # ~2 KiB planted, 72 MiB of dicts once decoded
    blob = envelope(codec.CODEC_MSGPACK, stored, flags=codec.FLAG_ZLIB, raw_length=len(raw))
    peak, error = peak_memory(lambda: PLAIN.decode(KEY, blob))
    assert isinstance(error, exceptions.CorruptEntryError), error
    assert "inflates" in str(error)
    assert peak < 4 << 20  # refused before decompressing


def test_an_unsigned_entry_of_empty_containers_is_refused_while_decoding() -> None:
    blob = envelope(codec.CODEC_MSGPACK, empty_maps())
    peak, error = peak_memory(lambda: PLAIN.decode(KEY, blob))
    assert isinstance(error, exceptions.CorruptEntryError), error
    limit = exact_values.expansion_budget(len(empty_maps()))
    assert peak < limit + (16 << 20)  # about the budget, not 72 bytes per stored byte
    # Declared lengths are capped before msgpack allocates the container.
    huge = envelope(codec.CODEC_MSGPACK, b"\xdd\x7f\xff\xff\xff" + b"\xc0" * 64)
    with pytest.raises(exceptions.CorruptEntryError):
        PLAIN.decode(KEY, huge)


def test_signed_entries_are_trusted_to_expand() -> None:
    raw = empty_maps(1 << 16)
    stored = zlib.compress(raw, 9)
    blob = envelope(
        codec.CODEC_MSGPACK, stored, flags=codec.FLAG_ZLIB, raw_length=len(raw), secret=SECRET
    )
    assert SIGNED.decode(KEY, blob) == [{}] * (1 << 16)


def test_realistic_unsigned_values_are_within_the_bounds() -> None:
    values: list[Any] = [
        [[i] for i in range(50_000)],
        [(i, str(i)) for i in range(50_000)],
        {f"k{i}": {"tile": [i, i + 1], "ok": True} for i in range(20_000)},
        [{i} for i in range(20_000)],
        {"shapes": [[16, 32], [64]] * 10_000, "name": "matmul"},
    ]
    for value in values:
        for compression in ("auto", "zlib", "zstd"):
            c = Codec(compression=compression)  # type: ignore[arg-type]
            assert c.decode(KEY, c.encode(KEY, value)) == value
