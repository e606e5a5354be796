"""Fuzzing the byte formats: canonical keys, value envelopes and dump files.

Values are built from a byte tape (``st.binary``) by a small interpreter rather
than by ``st.recursive``: Hypothesis draws and shrinks one bytes object per
example, about ten times faster than a recursive strategy of the same shapes,
so the round-trip properties afford ``FUZZ_EXAMPLES`` (default
10,000) examples each in a few seconds, and a failure still shrinks to a short
tape, hence a small value. The other properties run a fifth of that.

Keys are checked against an independent parser of the documented key format:
``parse(encode(x)) == canon(x)`` with every dict/set in sorted order means the
encoding is a function of the canonical value (equal values, equal bytes) and
is injective on canonical values (different values or types, different bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import hashlib
import io
import math
import os
import pickle
import struct
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redis_cache import codec, dumpfile, exceptions, keys
from redis_cache.codec import Codec, unsigned_tag

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10000"))
settings.register_profile(
    "redis_cache_fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings.get_profile("redis_cache_fuzz")
MUTATIONS = settings(ROUND_TRIP, max_examples=max(100, FUZZ_EXAMPLES // 5))

SECRET = b"fuzz-secret-0123456789abcdef"
OTHER_SECRET = b"other-fuzz-secret-0123456789"
KEY = hashlib.sha256(b"fuzz entry").hexdigest().encode()
OTHER_KEY = hashlib.sha256(b"another entry").hexdigest().encode()
PLAIN_CODECS = [Codec(), Codec(compression="zlib"), Codec(compression="off")]
SIGNED_CODECS = [Codec(SECRET), Codec(SECRET, compression="zlib"), Codec(SECRET, compression="off")]
CODECS = PLAIN_CODECS + SIGNED_CODECS
NAN_BITS = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
TAPES = st.binary(max_size=160)


# --------------------------------------------------------------------------- values from a tape


@dataclasses.dataclass(frozen=True)
class Point:
    """A class only signed pickles can store."""

    x: int
    y: str


class Tape:
    """Reads choices from bytes; reads past the end give zeros, which build small values."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk.ljust(n, b"\0")


_CODEPOINTS = [
    0x41,
    0x7A,
    0x20,
    0x00,
    0xE9,
    0x3B1,
    0x20AC,
    0xFFFF,
    0x1F600,
    0x10FFFF,
    0xD800,
    0xDFFF,
]
_FLOATS = [0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 5e-324, 1e308]
MAX_DEPTH = 6

# Leaf kinds, then container kinds.
_LEAF_KINDS = 10
_EXTRA_KINDS = 4  # types msgpack cannot hold exactly (only with ``extras=True``)


def build(tape: Tape, *, extras: bool = False, hashable: bool = False, depth: int = 0) -> Any:
    """A value of the supported types (and, with ``extras``, some only pickle holds)."""
    kinds = _LEAF_KINDS + (_EXTRA_KINDS if extras else 0)
    containers = 0 if depth >= MAX_DEPTH else (2 if hashable else 5)
    b = tape.byte()
    # Half the byte values open a container (zero, the end of the tape, is a leaf):
    # with sizes 0-4 that nests about as often as it ends.
    choice = kinds + b % containers if containers and b >= 128 else b % kinds
    if choice < _LEAF_KINDS:
        return _leaf(tape, choice)
    if choice < kinds:
        extra = choice - _LEAF_KINDS
        if hashable and extra in (1, 3):  # bytearray and OrderedDict are unhashable
            extra -= 1
        return _extra(tape, extra)
    container = choice - kinds
    size = tape.byte() % 5
    if hashable:  # tuple or frozenset of hashables
        items = [build(tape, extras=extras, hashable=True, depth=depth + 1) for _ in range(size)]
        return tuple(items) if container == 0 else frozenset(items)
    if container in (0, 1):
        items = [build(tape, extras=extras, depth=depth + 1) for _ in range(size)]
        return tuple(items) if container == 0 else items
    if container == 2:
        return {
            build(tape, extras=extras, hashable=True, depth=depth + 1): build(
                tape, extras=extras, depth=depth + 1
            )
            for _ in range(size)
        }
    members = [build(tape, extras=extras, hashable=True, depth=depth + 1) for _ in range(size)]
    return set(members) if container == 3 else frozenset(members)


def _leaf(tape: Tape, choice: int) -> Any:
    if choice == 0:
        return None
    if choice == 1:
        return bool(tape.byte() & 1)
    if choice == 2:
        return tape.byte() - 128
    if choice == 3:
        return struct.unpack(">q", tape.take(8))[0]
    if choice == 4:  # beyond 64 bits, either sign
        n = int.from_bytes(tape.take(1 + tape.byte() % 24), "big") + 2**64
        return -n if tape.byte() & 1 else n
    if choice == 5:
        return _FLOATS[tape.byte() % len(_FLOATS)]
    if choice == 6:  # any bit pattern: NaN payloads, subnormals, infinities
        return struct.unpack(">d", tape.take(8))[0]
    if choice == 7:
        return "".join(
            chr(_CODEPOINTS[tape.byte() % len(_CODEPOINTS)]) for _ in range(tape.byte() % 6)
        )
    if choice == 8:
        return tape.take(tape.byte() % 12)
    return tape.take(tape.byte() % 12).decode("latin-1")


def _extra(tape: Tape, choice: int) -> Any:
    if choice == 0:
        return Point(tape.byte(), "p")
    if choice == 1:
        return bytearray(tape.take(tape.byte() % 6))
    if choice == 2:
        return fractions.Fraction(tape.byte() + 1, tape.byte() + 1)
    return OrderedDict([("k", tape.byte())])


def value_from(data: bytes, *, extras: bool = False) -> Any:
    return build(Tape(data), extras=extras)


def canon(x: Any, *, nan_is_one: bool = False) -> Any:
    """Type-tagged form: equal iff exactly the same types and values (float bits included).

    Multiplicities are kept (sorted tuples, not sets): a set may hold several NaNs.
    ``nan_is_one`` canonicalizes every NaN to one pattern, as the key encoder does.
    """
    kind = type(x)
    if kind in (type(None), bool, int, str, bytes):
        return (kind.__name__, x)
    if kind is float:
        if nan_is_one and math.isnan(x):
            return ("float", NAN_BITS)
        return ("float", struct.pack(">d", x))
    if kind in (tuple, list):
        return (kind.__name__, tuple(canon(e, nan_is_one=nan_is_one) for e in x))
    if kind is dict:
        pairs = [
            (canon(k, nan_is_one=nan_is_one), canon(v, nan_is_one=nan_is_one)) for k, v in x.items()
        ]
        return ("dict", tuple(sorted(pairs, key=repr)))
    if kind in (set, frozenset):
        return (
            kind.__name__,
            tuple(sorted((canon(e, nan_is_one=nan_is_one) for e in x), key=repr)),
        )
    if kind is bytearray:
        return ("bytearray", bytes(x))
    if kind is OrderedDict:
        return ("OrderedDict", tuple((canon(k), canon(v)) for k, v in x.items()))
    if kind in (Point, fractions.Fraction):
        return (kind.__name__, repr(x))
    raise TypeError(kind)


def has_extras(x: Any) -> bool:
    kind = type(x)
    if kind in (tuple, list, set, frozenset):
        return any(has_extras(e) for e in x)
    if kind is dict:
        return any(has_extras(k) or has_extras(v) for k, v in x.items())
    return kind not in (type(None), bool, int, float, str, bytes)


def rebuild(x: Any) -> Any:
    """An equal value whose dicts and sets were built in another order."""
    kind = type(x)
    if kind in (tuple, list):
        return kind(rebuild(e) for e in x)
    if kind is dict:
        return {rebuild(k): rebuild(v) for k, v in reversed(list(x.items()))}
    if kind in (set, frozenset):
        members = list(x)
        return kind(rebuild(e) for e in members[1:] + members[:1])
    return x


# --------------------------------------------------------------------------- key format parser

_HEAD = struct.Struct(">cQ")


def parse_key(data: bytes) -> Any:
    """Independent reading of the documented key format; checks canonical order too."""
    value, end = _parse(data, 0)
    assert end == len(data), f"{len(data) - end} trailing bytes"
    return value


def _parse(data: bytes, i: int) -> tuple[Any, int]:
    tag = data[i : i + 1]
    i += 1
    if tag == b"N":
        return ("NoneType", None), i
    if tag in (b"T", b"F"):
        return ("bool", tag == b"T"), i
    if tag == b"i":
        return ("int", struct.unpack_from(">q", data, i)[0]), i + 8
    if tag == b"f":
        bits = data[i : i + 8]
        if math.isnan(struct.unpack(">d", bits)[0]):
            assert bits == NAN_BITS, "a NaN not in the one canonical pattern"
        return ("float", bits), i + 8
    _, n = _HEAD.unpack_from(data, i - 1)
    i += 8
    if tag == b"I":
        v = int.from_bytes(data[i : i + n], "big", signed=True)
        assert not -(2**63) <= v < 2**63, "a 64-bit int in the long form: two encodings"
        assert n == (v.bit_length() + 8) >> 3, "a big int with a padded length"
        return ("int", v), i + n
    if tag == b"s":
        return ("str", data[i : i + n].decode("utf-8", "surrogatepass")), i + n
    if tag == b"b":
        return ("bytes", data[i : i + n]), i + n
    items, spans = [], []
    count = n * 2 if tag == b"d" else n
    for _ in range(count):
        start = i
        item, i = _parse(data, i)
        items.append(item)
        spans.append(data[start:i])
    if tag in (b"t", b"l"):
        return ("tuple" if tag == b"t" else "list", tuple(items)), i
    if tag == b"d":
        encoded = [spans[k] + spans[k + 1] for k in range(0, len(spans), 2)]
        assert encoded == sorted(encoded), "dict items not in canonical order"
        pairs = [(items[k], items[k + 1]) for k in range(0, len(items), 2)]
        return ("dict", tuple(sorted(pairs, key=repr))), i
    assert tag in (b"e", b"z"), f"unknown tag {tag!r}"
    assert spans == sorted(spans), "set members not in canonical order"
    return ("set" if tag == b"e" else "frozenset", tuple(sorted(items, key=repr))), i


# --------------------------------------------------------------------------- keys


@ROUND_TRIP
@given(TAPES)
def test_key_encoding_round_trips_canonically(data: bytes) -> None:
    x = value_from(data)
    encoded = keys.encode(x)
    assert parse_key(encoded) == canon(x, nan_is_one=True)
    assert keys.encode(rebuild(x)) == encoded  # construction order never matters
    # The digest is that of the encoded (callee, isolation key, params) triple, whichever
    # fast path computed it, and keyword order does not change it.
    params = ((x, 1, "a"), {"k": x, "z": None})
    digest = keys.entry_digest("pkg.mod.fn", "iso", params)
    expected = hashlib.sha256(
        b"redis_cache/key/v1\0" + keys.encode(("pkg.mod.fn", "iso", params))
    ).hexdigest()
    assert digest == expected
    assert keys.entry_digest("pkg.mod.fn", "iso", ((x, 1, "a"), {"z": None, "k": x})) == digest


def retyped(x: Any) -> list[Any]:
    """Values equal to ``x`` under ``==`` (or nearly) but of another type."""
    kind = type(x)
    out: list[Any] = []
    if kind is bool:
        out += [int(x), float(x)]
    elif kind is int:
        if abs(x) < 2**53:
            out.append(float(x))
        if x in (0, 1):
            out.append(bool(x))
    elif kind is float and math.isfinite(x) and x.is_integer():
        out.append(int(x))
    elif kind is str:
        out.append(x.encode("utf-8", "surrogatepass"))
    elif kind is bytes:
        out.append(x.decode("latin-1"))
    elif kind is list:
        out.append(tuple(x))
    elif kind is tuple:
        out.append(list(x))
    elif kind is set:
        out.append(frozenset(x))
    elif kind is frozenset:
        out.append(set(x))
    elif kind is dict:
        out.append(list(x.items()))
    return out


@MUTATIONS
@given(TAPES)
def test_distinct_types_give_distinct_keys(data: bytes) -> None:
    x = value_from(data)
    for y in retyped(x):
        assert keys.encode(y) != keys.encode(x), (x, y)
        assert keys.encode([y, 0]) != keys.encode([x, 0])
        assert keys.entry_digest("m.f", "", ((y,), {})) != keys.entry_digest("m.f", "", ((x,), {}))


@MUTATIONS
@given(TAPES, TAPES)
def test_different_values_give_different_keys(a: bytes, b: bytes) -> None:
    x, y = value_from(a), value_from(b)
    same = canon(x, nan_is_one=True) == canon(y, nan_is_one=True)
    assert (keys.encode(x) == keys.encode(y)) == same


@MUTATIONS
@given(TAPES)
def test_unsupported_key_types_raise_key_encoding_errors(data: bytes) -> None:
    x = build(Tape(data), extras=True)
    if has_extras(x):
        with pytest.raises(exceptions.KeyEncodingError):
            keys.encode(x)
        with pytest.raises(exceptions.KeyEncodingError):
            keys.entry_digest("m.f", "", ((x,), {}))
    else:
        keys.encode(x)


# --------------------------------------------------------------------------- values


@ROUND_TRIP
@given(TAPES, st.sampled_from(CODECS))
def test_value_codec_round_trips_exact_types(data: bytes, c: Codec) -> None:
    x = value_from(data, extras=True)
    if has_extras(x) and not c.signed:
        with pytest.raises(exceptions.UnsupportedValueError):
            c.encode(KEY, x)  # unsigned pickles are never written
        return
    blob = c.encode(KEY, x)
    assert bool(codec.read_header(blob).signed) == c.signed
    back = c.decode(KEY, blob)
    assert type(back) is type(x)
    assert canon(back) == canon(x)
    # Another codec with the same secret reads it (compression is the writer's choice).
    peers = SIGNED_CODECS if c.signed else PLAIN_CODECS
    assert canon(peers[len(data) % 3].decode(KEY, blob)) == canon(x)


def decode_only_decoding_errors(c: Codec, key: bytes, blob: bytes) -> bool:
    """Decode; True if it raised a ValueDecodingError, False if it returned. Anything else fails."""
    try:
        c.decode(key, blob)
    except exceptions.ValueDecodingError:
        return True
    return False


@MUTATIONS
@given(st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: b"RC\x01" + b))
def test_decoding_random_bytes_raises_only_decoding_errors(blob: bytes) -> None:
    for c in (CODECS[0], CODECS[3]):
        decode_only_decoding_errors(c, KEY, blob)
    with contextlib.suppress(exceptions.CorruptEntryError):
        codec.read_header(blob)


@MUTATIONS
@given(
    st.integers(min_value=0, max_value=2),
    st.integers(min_value=0, max_value=3),
    st.binary(max_size=300),
    st.integers(min_value=0, max_value=400),
)
def test_garbage_behind_a_valid_checksum_raises_only_decoding_errors(
    codec_id: int, flags: int, payload: bytes, raw_length: int
) -> None:
    """A correct checksum lets the garbage through to zlib, zstd and msgpack."""
    for length in (len(payload), raw_length):
        header = struct.pack(">2sBBBQ", b"RC", 1, codec_id, flags, length)
        tag = unsigned_tag(KEY, header, payload)
        blob = header + tag + payload
        assert decode_only_decoding_errors(Codec(), KEY, blob) or codec_id != codec.CODEC_PICKLE


@MUTATIONS
@given(TAPES, st.sampled_from(CODECS), st.data())
def test_damaged_envelopes_raise_only_decoding_errors(
    data: bytes, c: Codec, draw: st.DataObject
) -> None:
    x = value_from(data, extras=c.signed)
    blob = c.encode(KEY, x)
    # Any single changed byte is caught (XXH3-64: a miss has probability 2**-64).
    i = draw.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="position")
    flip = draw.draw(st.integers(min_value=1, max_value=255), label="xor")
    assert decode_only_decoding_errors(c, KEY, blob[:i] + bytes([blob[i] ^ flip]) + blob[i + 1 :])
    # Several changed bytes: never anything but a decoding error.
    damaged = bytearray(blob)
    for _ in range(draw.draw(st.integers(min_value=2, max_value=8), label="mutations")):
        j = draw.draw(st.integers(min_value=0, max_value=len(blob) - 1))
        damaged[j] = draw.draw(st.integers(min_value=0, max_value=255))
    if bytes(damaged) != blob:
        decode_only_decoding_errors(c, KEY, bytes(damaged))
    # Every truncation, and any extension, is caught.
    for cut in range(len(blob)):
        assert decode_only_decoding_errors(c, KEY, blob[:cut]), f"accepted a {cut}-byte prefix"
    tail = draw.draw(st.binary(min_size=1, max_size=16), label="extension")
    assert decode_only_decoding_errors(c, KEY, blob + tail)
    # The entry of one key stored under another, or read with another secret.
    assert decode_only_decoding_errors(c, OTHER_KEY, blob)
    stranger = Codec(OTHER_SECRET) if c.signed else Codec(SECRET)
    assert decode_only_decoding_errors(stranger, KEY, blob)


@MUTATIONS
@given(TAPES, st.data())
def test_unsigned_pickles_are_never_loaded(data: bytes, draw: st.DataObject) -> None:
    """A planted pickle with a valid checksum is refused by every codec, before pickle sees it."""
    payload = pickle.dumps(value_from(data, extras=True))
    flags = draw.draw(st.sampled_from([0, codec.FLAG_ZLIB]))
    stored = zlib.compress(payload) if flags else payload
    header = struct.pack(">2sBBBQ", b"RC", 1, codec.CODEC_PICKLE, flags, len(payload))
    tag = unsigned_tag(KEY, header, stored)
    for c in CODECS:
        with pytest.raises(exceptions.ValueDecodingError):
            c.decode(KEY, header + tag + stored)


def test_deeply_nested_msgpack_behind_a_valid_checksum_is_refused() -> None:
    for payload in (b"\x91" * 200_000 + b"\xc0", b"\x81\xc0" * 100_000 + b"\xc0"):
        header = struct.pack(">2sBBBQ", b"RC", 1, codec.CODEC_MSGPACK, 0, len(payload))
        tag = unsigned_tag(KEY, header, payload)
        with pytest.raises(exceptions.ValueDecodingError):
            Codec().decode(KEY, header + tag + payload)


# --------------------------------------------------------------------------- dump files


def dump_of(data: bytes, path: Path) -> tuple[bytes, list[dumpfile.DumpRecord]]:
    tape = Tape(data)
    records = []
    for n in range(tape.byte() % 4):
        value = build(tape)
        callee = f"mod.fn{n}"
        digest = hashlib.sha256(repr(n).encode() + data).hexdigest()
        records.append(dumpfile.DumpRecord(callee, digest, Codec().encode(digest.encode(), value)))
    dumpfile.write(path, records)
    return path.read_bytes(), records


def read_or_invalid(path: Path, content: bytes) -> list[dumpfile.DumpRecord] | None:
    """Read ``content`` as a dump: the records, or None on InvalidDumpFileError (only).

    ``dumpfile.read(path)`` is ``list(_records(open(path), name))``; feeding ``_records``
    from memory skips a file rewrite (milliseconds) per damaged variant.
    """
    try:
        return list(dumpfile._records(io.BytesIO(content), str(path)))
    except dumpfile.InvalidDumpFileError:
        return None


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dumps")


@MUTATIONS
@given(TAPES, st.data())
def test_damaged_dump_files_raise_only_invalid_dump_file_error(
    dump_dir: Path, data: bytes, draw: st.DataObject
) -> None:
    good, records = dump_of(data, dump_dir / "good.dump")
    assert dumpfile.read(dump_dir / "good.dump") == records
    bad = dump_dir / "bad.dump"
    assert read_or_invalid(bad, good) == records
    # Mutations: refused, or (an equivalent msgpack spelling) read back unchanged.
    for count in (1, draw.draw(st.integers(min_value=2, max_value=6), label="mutations")):
        damaged = bytearray(good)
        for _ in range(count):
            j = draw.draw(st.integers(min_value=0, max_value=len(good) - 1))
            damaged[j] = draw.draw(st.integers(min_value=0, max_value=255))
        got = read_or_invalid(bad, bytes(damaged))
        assert got is None or got == records, "a damaged dump read back other records"
    # Truncations are always refused: a truncated dump never half-loads.
    cuts = {0, 1, len(good) - 1, draw.draw(st.integers(min_value=0, max_value=len(good) - 1))}
    for cut in cuts:
        assert read_or_invalid(bad, good[:cut]) is None, f"accepted a {cut}-byte prefix"
    # Extensions never raise anything else (a partial trailing object is refused too).
    got = read_or_invalid(bad, good + draw.draw(st.binary(min_size=1, max_size=16)))
    assert got is None or got == records


@MUTATIONS
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: dumpfile.MAGIC + b))
def test_random_dump_files_raise_only_invalid_dump_file_error(dump_dir: Path, blob: bytes) -> None:
    got = read_or_invalid(dump_dir / "random.dump", blob)
    if got is not None:  # only a well-formed, checksummed dump may be accepted
        assert blob.startswith(dumpfile.MAGIC)


@pytest.mark.parametrize("tail", [b"\x92", b"\xc4\x10partial", b"\x93\xa3abc"], ids=repr)
def test_dump_with_trailing_garbage_is_refused(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "x.dump"
    dumpfile.write(path, [dumpfile.DumpRecord("m.f", "ab" * 32, Codec().encode(b"k", 1))])
    path.write_bytes(path.read_bytes() + tail)
    with pytest.raises(dumpfile.InvalidDumpFileError):
        dumpfile.read(path)
