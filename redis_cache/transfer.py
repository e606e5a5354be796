"""``redis-cache dump|load``: a namespace's entries to a dump file and back.

A dump streams every entry (or one interface's) with its expiry, in pipelines
bounded in keys and bytes; a load verifies the whole file first (a truncated one
loads nothing), then ``SET NX`` each entry with the expiry it had, so the first
writer wins and nothing is overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import connection, dumpfile
from .layers.base import EntryKey, Space
from .layers.redis import RedisLayer
from .ops import BATCH, BATCH_BYTES, DIGEST, KeyName, Progress, batched, pipelined, value_keys

T = TypeVar("T")


def dump(
    layer: RedisLayer,
    path: Path,
    progress: Progress | None = None,
    space: Space | None = None,
) -> int:
    """Write every entry of the namespace (or of one interface) to a dump file; return how many."""
    return dumpfile.write(path, records(layer, progress, space))


def _no_progress(count: int, size: int) -> None:
    """Progress sink for callers without a terminal."""


def records(
    layer: RedisLayer, progress: Progress | None = None, space: Space | None = None
) -> Iterator[dumpfile.DumpRecord]:
    """The namespace's entries with their expiry, in pipelined batches."""
    progress = progress or _no_progress
    count = size = 0
    for batch in batched(value_keys(layer, space), BATCH):
        sizes = pipelined(layer, "STRLEN", batch, lambda pipe, item: pipe.strlen(item[0]))
        for group in _by_bytes(batch, [int(s or 0) for s in sizes]):
            # PEXPIRETIME (Redis 7.0+) right after GET, in the same pipeline: the
            # absolute expiry of the value we got, the same whoever dumps and when.
            replies = pipelined(layer, "GET", group, _get_with_expiry)
            for (_, name), value, at in zip(group, replies[0::2], replies[1::2], strict=True):
                if value is None:  # deleted or expired since SCAN
                    continue
                expires = int(at) if at is not None and int(at) > 0 else None
                count += 1
                size += len(value)
                yield dumpfile.DumpRecord(
                    name.callee, name.digest, bytes(value), name.space, expires
                )
        progress(count, size)


def _get_with_expiry(pipe: Any, item: tuple[bytes, KeyName]) -> None:
    pipe.get(item[0])
    pipe.execute_command("PEXPIRETIME", item[0])


def _by_bytes(items: list[T], sizes: list[int]) -> Iterator[list[T]]:
    """Split ``items`` so that no group's values exceed :data:`BATCH_BYTES` (unless alone)."""
    group: list[T] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if group and total + size > BATCH_BYTES:
            yield group
            group, total = [], 0
        group.append(item)
        total += size
    if group:
        yield group


@dataclass
class LoadResult:
    total: int = 0  # records in the file
    loaded: int = 0
    existing: int = 0
    oversize: int = 0
    expired: int = 0  # had a TTL that ran out before the load
    # One written key per node, for WAIT (REDIS_CACHE_MIN_REPLICAS) at the end.
    wait_keys: dict[str, EntryKey] = field(default_factory=dict)


def check_dump(path: Path) -> int:
    """``dumpfile.verify`` plus a check that every record names a well-formed entry."""
    count = 0
    for record in dumpfile.iterate(path):
        if not record.callee or not DIGEST.match(record.digest):
            raise dumpfile.InvalidDumpFileError(f"{path} holds a record with a malformed key")
        count += 1
    return count


def load(
    layer: RedisLayer,
    path: Path,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> LoadResult:
    """``SET NX`` every entry of a verified dump (first writer wins; expiry kept).

    ``on_total`` hears the record count once the file is verified, before any write.
    """
    try:
        total = check_dump(path)
    except dumpfile.InvalidDumpFileError as exc:
        raise dumpfile.InvalidDumpFileError(f"cannot load: {exc}; nothing was loaded") from exc
    if on_total is not None:
        on_total(total)
    result = LoadResult(total=total)
    try:
        _load_records(layer, path, result, progress)
    except dumpfile.InvalidDumpFileError as exc:
        raise dumpfile.InvalidDumpFileError(
            f"{exc}: the file changed while loading ({result.loaded} entries were loaded)"
        ) from exc
    for key in result.wait_keys.values():  # one per node: WAIT covers a node's writes
        layer.wait_for_replicas(key)
    return result


def _node_of(layer: RedisLayer, key: EntryKey) -> str:
    """The node holding ``key`` (always the one primary outside a cluster)."""
    if layer.settings.min_replicas <= 0:
        return ""
    return connection.node_name_for_key(layer.client(), layer.value_key(key))


def _load_records(
    layer: RedisLayer, path: Path, result: LoadResult, progress: Progress | None
) -> None:
    fitting = _fitting(dumpfile.iterate(path), layer.settings.max_value_bytes, result)
    for batch in _record_batches(fitting):
        written = pipelined(layer, "SET NX", batch, lambda pipe, r: _set_nx(layer, pipe, r))
        for was_written, record in zip(written, batch, strict=True):
            if was_written:
                key = EntryKey(record.callee, record.digest, record.space)
                result.wait_keys.setdefault(_node_of(layer, key), key)
        loaded = sum(1 for w in written if w)
        result.loaded += loaded
        result.existing += len(batch) - loaded
        if progress is not None:
            done = result.loaded + result.existing + result.oversize + result.expired
            progress(done, 0)


def _set_nx(layer: RedisLayer, pipe: Any, record: dumpfile.DumpRecord) -> object:
    key = layer.value_key(EntryKey(record.callee, record.digest, record.space))
    if record.expires_at_ms is not None:
        return pipe.set(key, record.blob, nx=True, pxat=record.expires_at_ms)
    return pipe.set(key, record.blob, nx=True)


def _fitting(
    records: Iterable[dumpfile.DumpRecord], limit: int, result: LoadResult
) -> Iterator[dumpfile.DumpRecord]:
    """Records the remote layer may store (size limit, not expired); counts the others."""
    for record in records:
        if len(record.blob) > limit:
            result.oversize += 1
            continue
        # A margin of a second: an entry must not expire between this check and SET.
        if record.expires_at_ms is not None and record.expires_at_ms < time.time() * 1000 + 1000:
            result.expired += 1
            continue
        yield record


def _record_batches(records: Iterable[dumpfile.DumpRecord]) -> Iterator[list[dumpfile.DumpRecord]]:
    batch: list[dumpfile.DumpRecord] = []
    size = 0
    for record in records:
        batch.append(record)
        size += len(record.blob)
        if len(batch) >= BATCH or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
