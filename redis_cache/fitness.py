"""What the Redis deployment offers the cache, read once from every primary.

Global determinism promises every caller the first-written result, which holds
only if the server that took the write is a primary, keeps the entry (no eviction
policy that may drop keys without a TTL), has the replicas ``WAIT`` counts on, and,
for a restart not to hand out new results for old keys, persists what it holds.
:func:`inspect` reads role, version, eviction policy, persistence, replicas and
``proto-max-bulk-len`` of every primary (all of a cluster's) into a
:class:`ServerReport`; ``dcache`` checks it on first use and ``redis-cache doctor``
renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.exceptions

from .config import Settings
from .connection import primary_clients
from .layers.redis import RedisLayer

__all__ = ["SAFE_POLICIES", "NodeReport", "ServerReport", "inspect"]

# Eviction policies that never drop a key without a TTL (dcache's entries have none).
SAFE_POLICIES = frozenset(
    {"noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}
)


@dataclass(frozen=True)
class NodeReport:
    """One primary as its ``INFO`` and ``CONFIG GET`` describe it."""

    role: str
    version: str
    eviction_policy: str
    aof: bool
    rdb_save: str | None  # the "save" schedule; None where CONFIG GET is not allowed
    replicas: int
    proto_max_bulk_len: int | None  # None where CONFIG GET is not allowed

    @property
    def persistent(self) -> bool | None:
        """Whether a restart keeps the data (AOF, or RDB snapshots); None if unknown."""
        if self.aof or self.rdb_save:
            return True
        return None if self.rdb_save is None else False


@dataclass(frozen=True)
class ServerReport:
    """Every primary behind a layer, and what that means for each interface."""

    nodes: tuple[NodeReport, ...]

    @property
    def primary(self) -> bool:
        return all(node.role == "master" for node in self.nodes)

    @property
    def roles(self) -> str:
        return ",".join(sorted({node.role for node in self.nodes}))

    @property
    def versions(self) -> str:
        return ",".join(sorted({node.version for node in self.nodes}))

    @property
    def eviction_policies(self) -> str:
        return ",".join(sorted({node.eviction_policy for node in self.nodes}))

    @property
    def eviction_safe(self) -> bool:
        """No primary may evict an entry without a TTL."""
        return all(node.eviction_policy in SAFE_POLICIES for node in self.nodes)

    @property
    def replicas(self) -> int:
        """Replicas connected to the primary that has fewest."""
        return min(node.replicas for node in self.nodes)

    @property
    def persistent(self) -> bool | None:
        """Every primary persists (True), one does not (False), or unknown (None)."""
        states = {node.persistent for node in self.nodes}
        if False in states:
            return False
        return None if None in states else True

    @property
    def proto_max_bulk_len(self) -> int | None:
        """The smallest largest-string any primary accepts, where known."""
        known = [n.proto_max_bulk_len for n in self.nodes if n.proto_max_bulk_len is not None]
        return min(known) if known else None

    def blocking_problems(self, settings: Settings) -> list[str]:
        """What makes global determinism impossible here (empty: it is possible)."""
        problems = []
        if not self.primary:
            problems.append(f"the server is a replica, not a primary (role {self.roles})")
        if not self.eviction_safe:
            problems.append(
                f"maxmemory-policy {self.eviction_policies} may evict deterministic entries "
                "(use noeviction or a volatile-* policy)"
            )
        if self.replicas < settings.min_replicas:
            problems.append(
                f"{self.replicas} replicas connected, REDIS_CACHE_MIN_REPLICAS="
                f"{settings.min_replicas}"
            )
        return problems

    def warnings(self, settings: Settings) -> list[str]:
        """What works but may cost results or writes (for a log line at first use)."""
        found = []
        if self.persistent is False:
            found.append(
                "the server persists nothing (neither AOF nor RDB snapshots): a restart loses "
                "every entry, and workers then compute new results for keys whose old "
                "results others already used"
            )
        elif self.persistent is None:
            found.append("AOF is off and the RDB schedule is unknown (CONFIG GET not allowed)")
        limit = self.proto_max_bulk_len
        if limit is not None and settings.max_value_bytes > limit:
            found.append(
                f"REDIS_CACHE_MAX_VALUE_BYTES={settings.max_value_bytes} exceeds the server's "
                f"proto-max-bulk-len={limit}: larger values will be refused"
            )
        return found


def inspect(layer: RedisLayer, *, read_config: bool = True) -> ServerReport:
    """Read the report from every primary behind ``layer``.

    ``read_config=False`` sends ``INFO`` only: workers' ACL users usually may not read
    the server's config (it holds ``masterauth``), and a refusal lands in the ACL log;
    the RDB schedule and ``proto-max-bulk-len`` are then unknown (persistence is known
    only when AOF is on). A ``CONFIG GET`` the server refuses (ACL, managed services)
    leaves the same fields unknown. Raises the layer's
    :class:`~redis_cache.exceptions.RemoteError` if the server fails.
    """
    client = layer.client()
    with layer.translated("INFO"):
        nodes = primary_clients(client)
        infos = [node.info() for node in nodes]
    return ServerReport(
        tuple(
            NodeReport(
                role=str(info.get("role", "unknown")),
                version=str(info.get("redis_version", "?")),
                eviction_policy=str(info.get("maxmemory_policy", "unknown")),
                aof=bool(int(info.get("aof_enabled", 0))),
                rdb_save=_config(layer, node, "save") if read_config else None,
                replicas=int(info.get("connected_slaves", 0)),
                proto_max_bulk_len=(
                    _int(_config(layer, node, "proto-max-bulk-len")) if read_config else None
                ),
            )
            for node, info in zip(nodes, infos, strict=True)
        )
    )


def _config(layer: RedisLayer, node: Any, name: str) -> str | None:
    """``CONFIG GET name`` of one node, or None where the server does not allow it."""
    with layer.translated(f"CONFIG GET {name}"):
        try:
            reply = node.config_get(name)
        except redis.exceptions.ResponseError:  # NOPERM, or CONFIG renamed away
            return None
    value = next(iter(reply.values()), None) if reply else None
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None
