"""Dump files: a namespace's entries as a stream, for ``REDIS_CACHE_PREPOPULATE`` and ``load``.

Layout: a magic line, then msgpack records ``[callee, digest, envelope, space]``
or ``[callee, digest, envelope, space, expires_at_ms]``, then a trailer
``[None, count, crc32]`` over every record. ``space`` is ``fcache`` or ``dcache``
(records of older dumps lack it and are ``dcache``). ``expires_at_ms`` is when the
entry expires, in milliseconds since the epoch, for entries that had a TTL when
dumped; entries without one are written in the four-field form, which older
releases read too. Entries stay in their codec
envelopes, so a dump carries each entry's integrity tag or signature with it.
A reader refuses a file whose magic, trailer, count or checksum is wrong before
the caller writes anything: a truncated dump never half-loads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgpack

from . import exceptions
from .layers.base import Space

SPACES: tuple[Space, ...] = ("fcache", "dcache")

MAGIC = b"REDIS_CACHE_DUMP v1\n"


InvalidDumpFileError = exceptions.InvalidDumpFileError  # where callers have looked for it


@dataclass(frozen=True, slots=True)
class DumpRecord:
    callee: str
    digest: str
    blob: bytes
    space: Space = "dcache"
    expires_at_ms: int | None = None  # None: never expires

    def fields(self) -> list[object]:
        head: list[object] = [self.callee, self.digest, self.blob, self.space]
        return head if self.expires_at_ms is None else [*head, self.expires_at_ms]


def write(path: Path, records: Iterable[DumpRecord]) -> int:
    """Write ``records`` atomically (temp file, then rename); return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            count = write_stream(f, records)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return count


def write_stream(f: IO[bytes], records: Iterable[DumpRecord]) -> int:
    """Write a whole dump to an open binary stream (a pipe, say); return the record count."""
    count, crc = 0, 0
    packer = msgpack.Packer(use_bin_type=True)
    f.write(MAGIC)
    for record in records:
        chunk = packer.pack(record.fields())
        crc = zlib.crc32(chunk, crc)
        f.write(chunk)
        count += 1
    f.write(packer.pack([None, count, crc]))
    f.flush()
    return count


def _records(f: IO[bytes], name: str) -> Iterator[DumpRecord]:
    """Records in file order, checked against the trailer once the stream ends."""
    if f.read(len(MAGIC)) != MAGIC:
        raise InvalidDumpFileError(f"{name} is not a redis_cache dump (bad magic line)")
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 31)
    packer = msgpack.Packer(use_bin_type=True)
    count, crc, trailer, trailer_end = 0, 0, None, 0
    try:
        for item in unpacker:
            if trailer is not None or not isinstance(item, list) or len(item) not in (3, 4, 5):
                raise InvalidDumpFileError(f"{name} holds a malformed record")
            first, second, third = item[:3]
            space = item[3] if len(item) >= 4 else "dcache"
            expires = item[4] if len(item) == 5 else None
            if first is None and isinstance(second, int) and isinstance(third, int):
                trailer = (second, third)
                trailer_end = len(MAGIC) + unpacker.tell()
                continue
            if not (
                isinstance(first, str)
                and isinstance(second, str)
                and isinstance(third, bytes)
                and space in SPACES
                and (expires is None or (isinstance(expires, int) and expires > 0))
            ):
                raise InvalidDumpFileError(f"{name} holds a malformed record")
            crc = zlib.crc32(packer.pack(item), crc)
            count += 1
            yield DumpRecord(first, second, third, space, expires)
    except (ValueError, msgpack.UnpackException) as exc:
        raise InvalidDumpFileError(f"{name} is corrupt: {exc}") from exc
    if trailer is None:
        raise InvalidDumpFileError(f"{name} is truncated (no trailer)")
    # The unpacker stops silently at an incomplete object at the end of the file.
    if trailer_end != f.seek(0, os.SEEK_END):
        raise InvalidDumpFileError(f"{name} has data after its trailer")
    if trailer != (count, crc):
        raise InvalidDumpFileError(f"{name} failed its checksum: corrupt or edited")


def iterate(path: Path) -> Iterator[DumpRecord]:
    """Stream records; the last step raises if the file was truncated or corrupt.

    Callers that must not act on a bad file call :func:`verify` first.
    """
    name = str(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise InvalidDumpFileError(f"cannot open dump {name}: {exc.strerror}") from exc
    with f:
        yield from _records(f, name)


def verify(path: Path) -> int:
    """Check a whole dump without keeping it in memory; return its record count."""
    return sum(1 for _ in iterate(path))


def read(path: Path) -> list[DumpRecord]:
    """Every record of a verified dump, or :class:`InvalidDumpFileError` and nothing."""
    return list(iterate(path))
