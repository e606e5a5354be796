"""Namespace-wide operations behind ``redis-cache stats|clear`` (and, in
:mod:`redis_cache.transfer`, ``dump|load``).

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
from typing import Any, TypeVar

from . import connection
from .dumpfile import SPACES
from .layers.base import EntryKey, Space
from .layers.redis import RedisLayer
from .publisher import stats_key

T = TypeVar("T")

SCAN_COUNT = 1000
BATCH = 500
# Bytes of values one pipeline may carry: entries can be up to 64 MiB each.
BATCH_BYTES = 16 * 1024 * 1024
ENTRY_SUFFIXES = ("lock", "fence", "signal", "staged", "wait")
# Internal keys of a namespace (``!stats``, ``!doctor:…``) start with this.
INTERNAL_MARK = "!"
_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")
DIGEST = re.compile(r"^[^{}:\s]{1,128}$")  # a digest as key names carry it

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


def value_keys(layer: RedisLayer, space: Space | None = None) -> Iterator[tuple[bytes, KeyName]]:
    """Each value key of the namespace (or of one interface) once.

    SCAN may repeat keys; the set of seen keys costs ~100 B/key.
    """
    seen: set[bytes] = set()
    match = glob_escape(layer.prefix) + (f"{space}:*" if space else "*")
    for key in scan(layer, match):
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
    # {owner: {callee: {counter: total}}}, as workers published them
    callee_counters: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

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
            "callee_counters": {
                owner: {callee: with_ratios(c) for callee, c in sorted(by_callee.items())}
                for owner, by_callee in sorted(self.callee_counters.items())
            },
        }


def with_ratios(counters: dict[str, float]) -> dict[str, float | None]:
    """A callee's counters plus its hit ratio and the compute time its hits saved.

    Saved time is hits times the mean computation time fleet-wide: what the fleet
    would have spent computing instead (``None`` until one computation was published).
    """
    hits = sum(counters.get(k, 0) for k in ("memo_hits", "disk_hits", "remote_hits"))
    lookups = hits + counters.get("misses", 0)
    computations = counters.get("computations", 0)
    seconds = counters.get("compute_seconds", 0.0)
    return {
        **counters,
        "hit_ratio": hits / lookups if lookups else None,
        "seconds_saved": hits * seconds / computations if computations else None,
    }


def count_value_keys(layer: RedisLayer, space: Space | None = None) -> int:
    """How many entries a dump or stats will visit: one SCAN pass, for progress totals."""
    return sum(1 for _ in value_keys(layer, space))


def namespace_stats(layer: RedisLayer, progress: Progress | None = None) -> NamespaceStats:
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
        if progress is not None:
            progress(result.total.entries, result.total.bytes)
    result.counters, result.callee_counters = read_counters(layer)
    return result


def published_counters(layer: RedisLayer) -> dict[str, dict[str, float]]:
    """The totals of the ``!stats`` hash as ``{owner: {counter: total}}``."""
    return read_counters(layer)[0]


def read_counters(
    layer: RedisLayer,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """The ``!stats`` hash: totals per owner, and counters per owner and callee."""
    client = layer.client()
    with layer.translated("HGETALL"):
        raw = client.hgetall(stats_key(layer.prefix))
    totals: dict[str, dict[str, float]] = {}
    per_callee: dict[str, dict[str, dict[str, float]]] = {}
    for field_name, value in sorted(raw.items()):
        text = bytes(field_name).decode(errors="replace")
        number = _number(bytes(value).decode())
        if text.count("|") >= 2:
            owner, rest = text.split("|", 1)
            callee, _, counter = rest.rpartition("|")
            per_callee.setdefault(owner, {}).setdefault(callee, {})[counter] = number
        else:
            owner, _, counter = text.partition(".")
            totals.setdefault(owner, {})[counter] = number
    return totals, per_callee


def zero_counters(layer: RedisLayer) -> bool:
    """Forget what workers published (``stats --zero``); whether there was anything."""
    client = layer.client()
    with layer.translated("DEL"):
        return bool(client.delete(stats_key(layer.prefix)))


def _number(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return float(text)


# --------------------------------------------------------------------------- clear


def clear_pattern(layer: RedisLayer, callee: str | None) -> str:
    """``SCAN MATCH`` pattern of the whole namespace, or of one callee's keys."""
    if callee is None:
        return glob_escape(layer.prefix) + "*"
    # Either space: the callee follows the space segment.
    return glob_escape(layer.prefix) + "*:" + glob_escape(stored_callee(layer, callee)) + ":*"


def doomed_keys(layer: RedisLayer, callee: str | None = None) -> Iterator[list[bytes]]:
    """Batches of the keys ``clear`` deletes."""
    wanted = None if callee is None else stored_callee(layer, callee)
    for batch in batched(scan(layer, clear_pattern(layer, callee)), BATCH):
        doomed = batch if wanted is None else [k for k in batch if _callee_of(layer, k) == wanted]
        if doomed:
            yield doomed


def count_doomed(layer: RedisLayer, callee: str | None = None) -> int:
    """How many keys ``clear`` would delete now (one SCAN pass)."""
    return len({k for batch in doomed_keys(layer, callee) for k in batch})


def clear(layer: RedisLayer, callee: str | None = None, progress: Progress | None = None) -> int:
    """Delete the namespace's keys (or one callee's) with batched ``UNLINK``; return how many."""
    deleted = 0
    for doomed in doomed_keys(layer, callee):
        deleted += _unlink(layer, doomed)
        if progress is not None:
            progress(deleted, 0)
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
