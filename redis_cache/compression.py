"""Compression of stored payloads: zstd where reading it pays, zlib on request.

"auto" keeps a compressed payload only where reading it costs less than reading the
raw one would. zstd decompresses at ~2 GB/s, about what a 10 Gbit/s link or
loopback delivers, so a hit pays off only when the payload shrinks to a third or
less (JSON-like text: 1/5; shared objects and cubins: 1/2, kept raw; random data
fails fast, in 0.1 ms per MiB). Below 16 KiB the round trip dominates anyway.
Decompression never produces more than the envelope declared.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, Final, NamedTuple

import zstandard as _zstd

from . import exceptions

AUTO_MIN_SIZE: Final = 16 * 1024
AUTO_MAX_RATIO: Final = 1 / 3
MIN_SIZE: Final = 512  # "zlib"/"zstd" leave smaller payloads alone
ZLIB_LEVEL: Final = 1  # fast: the network, not the ratio, is what we save on
ZSTD_LEVEL: Final = 1  # 3-6x faster than zlib 1 both ways, and smaller
FLAG_ZLIB: Final = 0x01  # the envelope's flag bits for each (part of the stored format)
FLAG_ZSTD: Final = 0x02


class Packed(NamedTuple):
    data: bytes
    zstd: bool


def compress(raw: bytes, mode: str) -> Packed | None:
    """``raw`` compressed as ``mode`` asks, or ``None`` when it is better kept raw."""
    size = len(raw)
    if mode == "off" or size < (AUTO_MIN_SIZE if mode == "auto" else MIN_SIZE):
        return None
    keep: float = size
    if mode == "zlib":
        packed = Packed(zlib.compress(raw, ZLIB_LEVEL), zstd=False)
    else:
        packed = Packed(_zstd_compressor().compress(raw), zstd=True)
        if mode == "auto":
            keep = size * AUTO_MAX_RATIO
    return packed if len(packed.data) < keep else None


_local = threading.local()  # zstd contexts are not thread-safe; building one costs ~µs


def _zstd_compressor() -> Any:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = _zstd.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _zstd_decompressor() -> Any:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = _zstd.ZstdDecompressor()
    return decompressor


def decompress(flags: int, raw_length: int, payload: memoryview) -> bytes | memoryview:
    """The raw payload; never produces more than ``raw_length + 1`` bytes."""
    limit = raw_length + 1
    try:
        if flags & FLAG_ZLIB:
            inflater = zlib.decompressobj()
            inflated = inflater.decompress(payload, limit)
            if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
                raise _corrupt("zlib stream is truncated, too long, or has trailing data")
            return inflated
        if flags & FLAG_ZSTD:
            # One frame whose header declares the raw length: one allocation, checked
            # against ours before anything is allocated.
            declared = _zstd.frame_content_size(payload)
            if declared != raw_length:
                raise _corrupt(f"zstd frame declares {declared} bytes, header {raw_length}")
            out: bytes = _zstd_decompressor().decompress(payload, max_output_size=limit)
            return out
    except exceptions.CorruptEntryError:
        raise
    except Exception as exc:  # zlib.error, zstandard.ZstdError, MemoryError on garbage...
        raise _corrupt(f"cannot decompress ({type(exc).__name__}: {exc})") from exc
    return payload


def _corrupt(detail: str) -> exceptions.CorruptEntryError:
    return exceptions.CorruptEntryError(f"corrupt cache entry: {detail}")
