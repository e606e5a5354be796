"""The value envelope: how a result becomes the bytes a storage layer keeps, and back.

Storage layers hold a :class:`Codec` and never look at value types. Every entry
is one self-describing envelope::

    offset 0   magic b"RC"                                  (2 bytes)
    offset 2   format version, 1                            (1 byte)
    offset 3   codec id: 0 raw bytes, 1 msgpack, 2 pickle   (1 byte)
    offset 4   flags: bit0 zlib, bit1 zstd, bit2 signed     (1 byte)
    offset 5   raw length: payload length before compression (8 bytes, big-endian)
    offset 13  tag: signed 32-byte HMAC-SHA256, unsigned 8-byte XXH3-64 (big-endian)
    then       payload (compressed if flagged)

The tag covers ``key_id + header[0:13] + stored payload``: binding the entry's key
into it means an entry copied under another key fails its check, as does any
change to the header (a flipped "signed" or codec bit included).

Why these rules:

* ``bytes`` results (the common case: object files, archives) are stored raw,
  with no serializer copy; everything else is msgpack, extended so that every
  type a key can hold comes back with its exact type (tuple, set, frozenset,
  ints beyond 64 bits, lone surrogates in str).
* msgpack cannot run code when read; pickle can. So a pickle is written only
  when a secret is set, always signed, and is never unpickled unless its HMAC
  verifies with our secret. Without a secret, a value msgpack cannot hold exactly
  is refused at write time (:class:`UnsupportedValueError`).
* With a secret, every entry is signed and unsigned ones are refused, so nobody
  without the secret can plant a result. Entries this process cannot verify
  (signed with another secret, signed while we have none, or unsigned while we
  have one) raise
  :class:`UnverifiedEntryError`: another fleet may read them, so callers treat
  them as misses and never delete them. A tag mismatch on a *signed* entry is
  also :class:`UnverifiedEntryError`, since a different secret and tampering
  look the same. Everything else that is wrong is :class:`CorruptEntryError`.
* Decompression is bounded by the declared raw length (at most 1 GiB), so a
  small entry can never make a reader allocate more than it declared.
* An unsigned entry can be planted by anyone who can write to Redis, so what an
  unsigned msgpack entry may cost a reader is bounded (signed entries are
  trusted): its payload inflates at most ``UNSIGNED_MAX_INFLATION`` times (writers
  store such payloads uncompressed instead), and the containers it decodes to may
  take at most ``UNSIGNED_MAX_EXPANSION`` bytes of memory per payload byte
  (msgpack turns a 1-byte empty map into a 64-byte dict; only values made mostly
  of empty containers come near). Either excess is a :class:`CorruptEntryError`.
"""

from __future__ import annotations

import hmac
import pickle
import struct
import threading
import typing
from collections.abc import Callable
from typing import Final, Generic, Literal, NamedTuple, TypeVar

import xxhash

from . import compression, exceptions, values
from .compression import FLAG_ZLIB, FLAG_ZSTD
from .config import Compression

__all__ = [
    "CODEC_MSGPACK",
    "CODEC_PICKLE",
    "CODEC_RAW",
    "FLAG_SIGNED",
    "FLAG_ZLIB",
    "FLAG_ZSTD",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RAW_LENGTH",
    "Codec",
    "Compression",
    "Header",
    "read_header",
]

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")

# --- Envelope layout (part of the stored format: never change, bump FORMAT_VERSION) ---
MAGIC: Final = b"RC"
FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 13  # magic, version, codec, flags, raw length
CODEC_RAW: Final = 0
CODEC_MSGPACK: Final = 1
CODEC_PICKLE: Final = 2
FLAG_SIGNED: Final = 0x04
HMAC_TAG_SIZE: Final = 32
CHECKSUM_TAG_SIZE: Final = 8
MAX_RAW_LENGTH: Final = 1 << 30  # 1 GiB: bounds what any reader will allocate

# What an unsigned msgpack entry may cost a reader (see the module docstring).
UNSIGNED_MAX_INFLATION: Final = 8  # raw payload bytes per stored payload byte
UNSIGNED_INFLATION_ALLOWANCE: Final = 64 * 1024  # small payloads are never refused


_CODECS: Final = {CODEC_RAW: "raw", CODEC_MSGPACK: "msgpack", CODEC_PICKLE: "pickle"}
_KNOWN_FLAGS: Final = FLAG_ZLIB | FLAG_ZSTD | FLAG_SIGNED
_HEADER = struct.Struct(">2sBBBQ")

# Above this size checksums run partly on a second thread (zlib and OpenSSL release
# the GIL), overlapping with the copy or the other half instead of adding to it.
_PARALLEL_MIN: Final = 4 * 1024 * 1024

_PICKLE_PROTOCOL: Final = 5


class Header(NamedTuple):
    """A parsed envelope header (for stats, the CLI and :meth:`Codec.decode`).

    A NamedTuple rather than a frozen dataclass: it is built on every decode, and
    tuple construction costs a quarter of a dataclass's.
    """

    version: int
    codec: int
    flags: int
    raw_length: int

    @property
    def signed(self) -> bool:
        return bool(self.flags & FLAG_SIGNED)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & (FLAG_ZLIB | FLAG_ZSTD))

    @property
    def compression(self) -> Literal["zlib", "zstd"] | None:
        if self.flags & FLAG_ZLIB:
            return "zlib"
        if self.flags & FLAG_ZSTD:
            return "zstd"
        return None

    @property
    def codec_name(self) -> str:
        return _CODECS.get(self.codec, f"unknown({self.codec})")

    @property
    def tag_length(self) -> int:
        return HMAC_TAG_SIZE if self.signed else CHECKSUM_TAG_SIZE

    @property
    def payload_offset(self) -> int:
        return HEADER_SIZE + self.tag_length


def _corrupt(detail: str) -> exceptions.CorruptEntryError:
    return exceptions.CorruptEntryError(f"corrupt cache entry: {detail}")


def _unverified(detail: str) -> exceptions.UnverifiedEntryError:
    return exceptions.UnverifiedEntryError(f"unverified cache entry: {detail}")


def _view(blob: Buffer) -> memoryview:
    """A flat byte view of ``blob`` without copying it."""
    try:
        view = memoryview(blob)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        if not view.contiguous:
            raise TypeError("strided buffer")
    except (TypeError, ValueError) as exc:
        raise _corrupt(f"not a contiguous bytes-like object ({type(blob).__qualname__})") from exc
    return view


def _parse_header(view: memoryview) -> Header:
    if len(view) < HEADER_SIZE:
        raise _corrupt(f"truncated: {len(view)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, codec, flags, raw_length = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise _corrupt("not a redis_cache entry (bad magic)")
    if version != FORMAT_VERSION:
        raise _corrupt(f"unknown format version {version}")
    if codec not in _CODECS:
        raise _corrupt(f"unknown codec id {codec}")
    if flags & ~_KNOWN_FLAGS:
        raise _corrupt(f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}")
    if flags & FLAG_ZLIB and flags & FLAG_ZSTD:
        raise _corrupt("flagged both zlib and zstd")
    if raw_length > MAX_RAW_LENGTH:
        raise _corrupt(f"declared raw length {raw_length} exceeds {MAX_RAW_LENGTH}")
    header = Header(version, codec, flags, raw_length)
    if len(view) < header.payload_offset:
        raise _corrupt(f"truncated: {len(view)} bytes, shorter than header and tag")
    return header


def read_header(blob: Buffer) -> Header:
    """Parse and sanity-check the header of ``blob``; raises :class:`CorruptEntryError`.

    Only the header is checked: the tag and payload are verified by :meth:`Codec.decode`.
    """
    return _parse_header(_view(blob))


# --- Checksums -----------------------------------------------------------------


class _Worker(threading.Thread, Generic[T]):
    """Runs ``fn`` on another thread: OpenSSL's HMAC releases the GIL
    on large buffers, so the work overlaps with what the calling thread does."""

    def __init__(self, fn: Callable[[], T]) -> None:
        super().__init__(name="redis_cache-codec", daemon=True)
        self.fn = fn
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc

    def outcome(self) -> T:
        self.join()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _run_while_copying(
    fn: Callable[[], T], payload: memoryview, overlap: bool
) -> tuple[T, bytes | None]:
    """``(fn(), bytes(payload) if overlap else None)``, the two overlapped on two threads."""
    if not overlap:
        return fn(), None
    worker = _Worker(fn)
    worker.start()
    copy = bytes(payload)
    return worker.outcome(), copy


def unsigned_tag(key_id: bytes, header: Buffer, payload: Buffer) -> bytes:
    """The integrity tag of an unsigned entry: XXH3-64 of key, header and payload.

    Not a MAC (anyone can compute it): it catches damage and entries copied under
    another key. XXH3 runs at memory speed, ~8x crc32 here, so a 32 MiB hit does not
    pay tens of milliseconds for its check.
    """
    digest = xxhash.xxh3_64(key_id)
    digest.update(header)
    digest.update(payload)
    return digest.digest()


# --- The codec -------------------------------------------------------------------


class Codec:
    """Turns results into envelopes and back; storage layers only move the bytes.

    ``secret`` (``REDIS_CACHE_SECRET``) makes every written entry signed and
    enables signed pickles; ``compression`` is ``REDIS_CACHE_COMPRESSION``.
    Instances are immutable and safe to share between threads.
    """

    __slots__ = ("_compression", "_secret")

    def __init__(self, secret: bytes | None = None, compression: Compression = "auto") -> None:
        if secret is not None and (type(secret) is not bytes or not secret):
            raise exceptions.InvalidSettingError(
                "REDIS_CACHE_SECRET", "<redacted>", "a non-empty secret"
            )
        if compression not in typing.get_args(Compression):
            raise exceptions.InvalidSettingError(
                "REDIS_CACHE_COMPRESSION", str(compression), ", ".join(typing.get_args(Compression))
            )
        self._secret = secret
        self._compression = compression

    def __repr__(self) -> str:  # never shows the secret
        return f"Codec(signed={self.signed}, compression={self._compression!r})"

    @property
    def signed(self) -> bool:
        """Whether this codec signs what it writes (a secret is set)."""
        return self._secret is not None

    @property
    def compression(self) -> Compression:
        return self._compression

    # -- writing --

    def encode(self, key_id: bytes, value: object) -> bytes:
        """The envelope of ``value`` stored under the entry ``key_id``.

        Raises :class:`UnsupportedValueError` (msgpack cannot hold it exactly and
        there is no secret), :class:`ValuePicklingError` (pickle failed too) or
        :class:`ValueTooLargeError` (payload over 1 GiB).
        """
        if type(value) is bytes:
            codec, raw = CODEC_RAW, value
        else:
            codec, raw = self._serialize(value)
        if len(raw) > MAX_RAW_LENGTH:
            raise exceptions.ValueTooLargeError(
                f"an encoded result of {len(raw)} bytes exceeds the envelope's "
                f"limit of {MAX_RAW_LENGTH} bytes"
            )
        flags, stored = self._compress(raw)
        if self._secret is not None:
            flags |= FLAG_SIGNED
        elif codec == CODEC_MSGPACK and flags and _inflates(len(raw), len(stored)):
            flags, stored = 0, raw  # readers refuse it compressed (see the module docstring)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, codec, flags, len(raw))
        return b"".join((header, self._tag(key_id, header, stored), stored))

    def _serialize(self, value: object) -> tuple[int, bytes]:
        inexact = values.first_inexact(value)
        if inexact is None:
            try:
                try:
                    return CODEC_MSGPACK, values.pack(value)
                except UnicodeEncodeError:
                    return CODEC_MSGPACK, values.pack_surrogates(value)
            except (values.Inexact, ValueError, RecursionError):
                # Cycles and very deep nesting hit msgpack's recursion limit
                # (ValueError) or ours; pickle handles both.
                pass
        if self._secret is None:
            what = type(value).__qualname__
            if inexact is None:
                why = "it is nested too deeply for msgpack or refers to itself"
            else:
                if inexact is not type(value):
                    what += f" holding a {inexact.__qualname__}"
                why = "msgpack cannot hold it with its exact type"
            raise exceptions.UnsupportedValueError(
                f"cannot store a result of type {what}: {why}, and unsigned pickles are "
                "never written; set REDIS_CACHE_SECRET to store it as a signed pickle, "
                "or pass a custom result encoder"
            )
        try:
            return CODEC_PICKLE, pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:  # __reduce__ may raise anything
            raise exceptions.ValuePicklingError(value, f"{type(exc).__name__}: {exc}") from exc

    def _compress(self, raw: bytes) -> tuple[int, bytes]:
        packed = compression.compress(raw, self._compression)
        if packed is None:
            return 0, raw
        return (FLAG_ZSTD if packed.zstd else FLAG_ZLIB), packed.data

    def _tag(self, key_id: bytes, header: Buffer, payload: Buffer) -> bytes:
        if self._secret is not None:
            mac = hmac.new(self._secret, key_id, "sha256")
            mac.update(header)
            mac.update(payload)
            return mac.digest()
        return unsigned_tag(key_id, header, payload)

    # -- reading --

    def decode(self, key_id: bytes, blob: Buffer) -> object:
        """The value in envelope ``blob`` stored under ``key_id``.

        Raises only :class:`ValueDecodingError` subclasses, whatever ``blob`` holds:
        :class:`UnverifiedEntryError` (not ours to read: a miss, never delete),
        :class:`CorruptEntryError` (broken, foreign or tampered),
        :class:`ValueUnPicklingError` (a verified pickle that does not load here).
        """
        header, raw, copy = self._open(key_id, blob)
        if header.codec == CODEC_RAW:
            if copy is not None:
                return copy
            return raw if type(raw) is bytes else bytes(raw)  # the one copy of the payload
        if header.codec == CODEC_MSGPACK:
            budget = None
            if not header.signed:
                budget = values.expansion_budget(len(raw))
            try:
                return values.unpack(raw, budget)
            except exceptions.ValueDecodingError:
                raise
            except Exception as exc:  # msgpack raises many types on garbage
                raise _corrupt(f"bad msgpack payload ({type(exc).__name__}: {exc})") from exc
        try:  # a verified pickle: we wrote it ourselves (or someone holding our secret did)
            return pickle.loads(raw)
        except Exception as exc:
            raise exceptions.ValueUnPicklingError(f"{type(exc).__name__}: {exc}") from exc

    def payload(self, key_id: bytes, blob: Buffer) -> tuple[int, bytes]:
        """``(codec id, serialized payload)`` of a verified envelope, without deserializing.

        Two envelopes of one key hold the same value if these are equal, whatever
        their compression: what the dump merge compares for values keys cannot encode.
        Raises what :meth:`decode` raises for an envelope it would not read.
        """
        header, raw, _ = self._open(key_id, blob)
        return header.codec, bytes(raw)

    def _open(self, key_id: bytes, blob: Buffer) -> tuple[Header, Buffer, bytes | None]:
        """Check ``blob`` and return its header, its decompressed payload, and a copy of
        that payload if one was made while the signature was checked."""
        view = _view(blob)
        header = _parse_header(view)
        if header.codec == CODEC_PICKLE and not header.signed:
            # No writer produces this: it can only be planted.
            raise _corrupt("unsigned pickle entry (never unpickled)")
        offset = header.payload_offset
        payload = view[offset:]
        tag = bytes(view[HEADER_SIZE:offset])
        # A large signed raw entry we are going to accept is copied out anyway: copy
        # it while another thread runs the HMAC (hashlib releases the GIL), and drop
        # the copy if the check fails. Unsigned checks run at memory speed already.
        overlap = (
            header.signed
            and self._secret is not None
            and header.codec == CODEC_RAW
            and not header.compressed
            and len(payload) >= _PARALLEL_MIN
        )
        copy: bytes | None = None
        if header.signed:
            if self._secret is None:
                raise _unverified("signed, and no secret is set")
            mac = hmac.new(self._secret, key_id, "sha256")
            mac.update(view[:HEADER_SIZE])

            def digest() -> bytes:
                mac.update(payload)
                return mac.digest()

            actual, copy = _run_while_copying(digest, payload, overlap)
            if not hmac.compare_digest(actual, tag):
                raise _unverified("signature does not verify (another secret, or tampered)")
        else:
            if unsigned_tag(key_id, view[:HEADER_SIZE], payload) != tag:
                raise _corrupt("checksum mismatch (damaged, or stored under another key)")
            if self._secret is not None:
                raise _unverified("unsigned, and a secret is set")
        unsigned_msgpack = not header.signed and header.codec == CODEC_MSGPACK
        if unsigned_msgpack and _inflates(header.raw_length, len(payload)):
            raise _corrupt(
                f"unsigned entry inflates {len(payload)} stored bytes to {header.raw_length} "
                f"(over {UNSIGNED_MAX_INFLATION} times)"
            )
        raw = compression.decompress(header.flags, header.raw_length, payload)
        if len(raw) != header.raw_length:
            raise _corrupt(f"payload is {len(raw)} bytes, header says {header.raw_length}")
        return header, raw, copy


def _inflates(raw_length: int, stored_length: int) -> bool:
    """Whether an unsigned msgpack payload inflates more than readers accept."""
    return raw_length > UNSIGNED_MAX_INFLATION * stored_length + UNSIGNED_INFLATION_ALLOWANCE
