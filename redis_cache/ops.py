"""Namespace-wide operations behind ``redis-cache stats|dump|load|clear``.

Everything walks the namespace with ``SCAN MATCH <prefix>* COUNT 1000`` (never
``KEYS``, which blocks the server; never ``FLUSHDB``, which is not ours to run), on
every primary of a cluster (redis-py's ``RedisCluster.scan_iter`` iterates each
primary's cursor), and batches the per-key work in pipelines (per node on a
cluster). redis-py errors become ``RemoteError`` through ``RedisLayer.translated``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import connection, dumpfile
from .dumpfile import SPACES
from .layers.base import EntryKey, Space
from .layers.redis import RedisLayer
from .publisher import stats_key

T = TypeVar("T")

SCAN_COUNT = 1000
BATCH = 500
# Bytes of values one pipeline may carry: entries can be up to 64 MiB each.
BATCH_BYTES = 16 * 1024 * 1024
ENTRY_SUFFIXES = ("lock", "fence", "signal")
# Internal keys of a namespace (``!stats``, ``!doctor:…``) start with this.
INTERNAL_MARK = "!"
_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")
_DIGEST = re.compile(r"^[^{}:\s]{1,128}$")

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- key names


@dataclass(frozen=True, slots=True)
class KeyName:
    """A key of an entry: ``<prefix><space>:<callee>:{<digest>}`` plus an optional ``:suffix``."""

    space: Space
    callee: str
    digest: str
    suffix: str = ""


def parse_key(prefix: str, key: bytes | str) -> KeyName | None:
    """The entry a key belongs to, or ``None`` for internal and foreign keys."""
    try:
        text = key.decode() if isinstance(key, bytes) else key
    except UnicodeDecodeError:
        return None
    if not text.startswith(prefix) or text.startswith(INTERNAL_MARK, len(prefix)):
        return None
    head, brace, tail = text[len(prefix) :].rpartition("}")
    if not brace or (tail and (tail[0] != ":" or tail[1:] not in ENTRY_SUFFIXES)):
        return None
    named, sep, digest = head.rpartition(":{")
    space, colon, callee = named.partition(":")
    if not sep or not colon or not callee or not digest or "{" in digest:
        return None
    if space not in SPACES:
        return None
    return KeyName(space, callee, digest, tail[1:])


def glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return _GLOB_SPECIALS.sub(r"\\\1", text)


def stored_callee(layer: RedisLayer, callee: str) -> str:
    """The callee as it appears in keys (the layer rewrites braces, which are hash tags)."""
    probe = layer.value_key(EntryKey(callee, "0", "fcache"))
    return probe[len(layer.prefix) + len("fcache:") : -len(":{0}")]


# --------------------------------------------------------------------------- scanning


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def scan(layer: RedisLayer, match: str) -> Iterator[bytes]:
    """Every key matching ``match`` on every primary (a key may repeat: SCAN's contract)."""
    client = layer.client()
    with layer.translated("SCAN"):
        for key in client.scan_iter(match=match, count=SCAN_COUNT):
            yield bytes(key)


def value_keys(layer: RedisLayer) -> Iterator[tuple[bytes, KeyName]]:
    """Each value key of the namespace once (SCAN may repeat keys; the set costs ~100 B/key)."""
    seen: set[bytes] = set()
    for key in scan(layer, glob_escape(layer.prefix) + "*"):
        name = parse_key(layer.prefix, key)
        if name is None or name.suffix or key in seen:
            continue
        seen.add(key)
        yield key, name


def pipelined(
    layer: RedisLayer, what: str, items: Iterable[T], add: Callable[[Any, T], object]
) -> list[Any]:
    """One pipeline round trip (per node on a cluster): ``add(pipe, item)`` for each item."""
    client = layer.client()
    with layer.translated(what):
        pipe = client.pipeline(transaction=False)
        for item in items:
            add(pipe, item)
        return list(pipe.execute())


def _is_cluster(client: Any) -> bool:
    return connection.is_cluster(client)


# --------------------------------------------------------------------------- stats


@dataclass
class Usage:
    entries: int = 0
    bytes: int = 0


@dataclass
class NamespaceStats:
    """Entries and value bytes of a namespace, per callee, plus the workers' counters."""

    namespace: str
    server: str
    total: Usage = field(default_factory=Usage)
    callees: dict[str, Usage] = field(default_factory=dict)
    counters: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "server": self.server,
            "entries": self.total.entries,
            "bytes": self.total.bytes,
            "callees": {
                name: {"entries": u.entries, "bytes": u.bytes}
                for name, u in sorted(self.callees.items())
            },
            "counters": self.counters,
        }


def namespace_stats(layer: RedisLayer) -> NamespaceStats:
    """Count value keys and sum their ``STRLEN`` (the bytes a dump carries), per callee."""
    result = NamespaceStats(layer.settings.namespace, layer.settings.server_name)
    for batch in batched(value_keys(layer), BATCH):
        sizes = pipelined(layer, "STRLEN", batch, lambda pipe, item: pipe.strlen(item[0]))
        for (_, name), size in zip(batch, sizes, strict=True):
            if not size:  # deleted or expired since SCAN
                continue
            usage = result.callees.setdefault(name.callee, Usage())
            for u in (usage, result.total):
                u.entries += 1
                u.bytes += int(size)
    result.counters = published_counters(layer)
    return result


def published_counters(layer: RedisLayer) -> dict[str, dict[str, float]]:
    """The ``!stats`` hash as ``{owner: {counter: total}}``."""
    client = layer.client()
    with layer.translated("HGETALL"):
        raw = client.hgetall(stats_key(layer.prefix))
    counters: dict[str, dict[str, float]] = {}
    for field_name, value in sorted(raw.items()):
        owner, _, counter = bytes(field_name).decode(errors="replace").partition(".")
        counters.setdefault(owner, {})[counter] = _number(bytes(value).decode())
    return counters


def _number(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float(text)


# --------------------------------------------------------------------------- dump


def dump(layer: RedisLayer, path: Path, progress: Progress | None = None) -> int:
    """Write every entry of the namespace to a dump file; return how many."""
    return dumpfile.write(path, _records(layer, progress or _no_progress))


def _no_progress(count: int, size: int) -> None:
    """Progress sink for callers without a terminal."""


def _records(layer: RedisLayer, progress: Progress) -> Iterator[dumpfile.DumpRecord]:
    count = size = 0
    for batch in batched(value_keys(layer), BATCH):
        sizes = pipelined(layer, "STRLEN", batch, lambda pipe, item: pipe.strlen(item[0]))
        for group in _by_bytes(batch, [int(s or 0) for s in sizes]):
            values = pipelined(layer, "GET", group, lambda pipe, item: pipe.get(item[0]))
            for (_, name), value in zip(group, values, strict=True):
                if value is None:  # deleted or expired since SCAN
                    continue
                count += 1
                size += len(value)
                yield dumpfile.DumpRecord(name.callee, name.digest, bytes(value), name.space)
        progress(count, size)


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


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    loaded: int = 0
    existing: int = 0
    oversize: int = 0
    # One written key per node, for WAIT (REDIS_CACHE_MIN_REPLICAS) at the end.
    wait_keys: dict[str, EntryKey] = field(default_factory=dict)


def check_dump(path: Path) -> int:
    """``dumpfile.verify`` plus a check that every record names a well-formed entry."""
    count = 0
    for record in dumpfile.iterate(path):
        if not record.callee or not _DIGEST.match(record.digest):
            raise dumpfile.InvalidDumpFileError(f"{path} holds a record with a malformed key")
        count += 1
    return count


def load(layer: RedisLayer, path: Path, progress: Progress | None = None) -> LoadResult:
    """``SET NX`` every entry of a verified dump (first writer wins; no TTL)."""
    try:
        check_dump(path)
    except dumpfile.InvalidDumpFileError as exc:
        raise dumpfile.InvalidDumpFileError(f"cannot load: {exc}; nothing was loaded") from exc
    result = LoadResult()
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
    records = _fitting(dumpfile.iterate(path), layer.settings.max_value_bytes, result)
    for batch in _record_batches(records):
        written = pipelined(layer, "SET NX", batch, lambda pipe, r: _set_nx(layer, pipe, r))
        for was_written, record in zip(written, batch, strict=True):
            if was_written:
                key = EntryKey(record.callee, record.digest, record.space)
                result.wait_keys.setdefault(_node_of(layer, key), key)
        loaded = sum(1 for w in written if w)
        result.loaded += loaded
        result.existing += len(batch) - loaded
        if progress is not None:
            progress(result.loaded + result.existing, 0)


def _set_nx(layer: RedisLayer, pipe: Any, record: dumpfile.DumpRecord) -> object:
    key = layer.value_key(EntryKey(record.callee, record.digest, record.space))
    return pipe.set(key, record.blob, nx=True)


def _fitting(
    records: Iterable[dumpfile.DumpRecord], limit: int, result: LoadResult
) -> Iterator[dumpfile.DumpRecord]:
    """Records the remote layer may store (REDIS_CACHE_MAX_VALUE_BYTES); counts the others."""
    for record in records:
        if len(record.blob) > limit:
            result.oversize += 1
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


# --------------------------------------------------------------------------- clear


def clear_pattern(layer: RedisLayer, callee: str | None) -> str:
    """``SCAN MATCH`` pattern of the whole namespace, or of one callee's keys."""
    if callee is None:
        return glob_escape(layer.prefix) + "*"
    # Either space: the callee follows the space segment.
    return glob_escape(layer.prefix) + "*:" + glob_escape(stored_callee(layer, callee)) + ":*"


def clear(layer: RedisLayer, callee: str | None = None) -> int:
    """Delete the namespace's keys (or one callee's) with batched ``UNLINK``; return how many."""
    wanted = None if callee is None else stored_callee(layer, callee)
    deleted = 0
    for batch in batched(scan(layer, clear_pattern(layer, callee)), BATCH):
        doomed = batch if wanted is None else [k for k in batch if _callee_of(layer, k) == wanted]
        if doomed:
            deleted += _unlink(layer, doomed)
    return deleted


def _callee_of(layer: RedisLayer, key: bytes) -> str | None:
    name = parse_key(layer.prefix, key)
    return None if name is None else name.callee


def _unlink(layer: RedisLayer, keys: list[bytes]) -> int:
    client = layer.client()
    if _is_cluster(client):
        # One UNLINK per key in a cluster pipeline: keys of many slots, one trip per node.
        return sum(pipelined(layer, "UNLINK", keys, lambda pipe, k: pipe.unlink(k)))
    with layer.translated("UNLINK"):
        return int(client.unlink(*keys))
