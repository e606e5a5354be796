"""Prometheus metrics: a worker's own counters, and the fleet's in text form.

In a worker (needs the ``prometheus`` extra, ``prometheus_client``)::

    from redis_cache import metrics
    metrics.register()            # the default registry; pass another to use it

For the fleet, ``redis-cache stats --prometheus`` prints what every worker
published to the namespace (no extra needed: the text format is written here),
for a textfile collector or a scrape endpoint that runs the command.

Both carry the same metrics: ``redis_cache_hits_total`` (labels ``interface``,
``callee``, ``layer``), ``redis_cache_misses_total``,
``redis_cache_computations_total`` and ``redis_cache_compute_seconds_total``
(``interface``, ``callee``), and every other counter of
:class:`~redis_cache.stats.CacheStats` as ``redis_cache_<counter>_total``
(``interface``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from .stats import PER_CALLEE, CacheStats

_LAYERS = {"memo_hits": "memo", "disk_hits": "disk", "remote_hits": "redis"}
_HELP = {
    "hits": "Calls served from a layer of the cache.",
    "misses": "Lookups no layer could serve.",
    "computations": "Calls that ran the function.",
    "compute_seconds": "Seconds spent running the function on misses.",
}


class Sample(NamedTuple):
    name: str  # without the redis_cache_ prefix and _total suffix
    labels: tuple[tuple[str, str], ...]
    value: float


def samples(
    interface: str,
    totals: Mapping[str, float],
    callees: Mapping[str, Mapping[str, float]],
) -> Iterator[Sample]:
    """One interface's counters as samples: per callee where counted per callee."""
    for callee, counters in sorted(callees.items()):
        for counter, value in counters.items():
            if counter in _LAYERS:
                labels = (("interface", interface), ("callee", callee),
                          ("layer", _LAYERS[counter]))  # fmt: skip
                yield Sample("hits", labels, value)
            elif counter in PER_CALLEE:
                yield Sample(counter, (("interface", interface), ("callee", callee)), value)
    for counter, value in sorted(totals.items()):
        if counter not in PER_CALLEE:
            yield Sample(counter, (("interface", interface),), value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(all_samples: Iterable[Sample]) -> str:
    """The Prometheus text format (version 0.0.4) of ``all_samples``."""
    by_name: dict[str, list[Sample]] = {}
    for sample in all_samples:
        by_name.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    for name, group in sorted(by_name.items()):
        metric = f"redis_cache_{name}_total"
        lines.append(f"# HELP {metric} {_HELP.get(name, f'The {name} counter of redis_cache.')}")
        lines.append(f"# TYPE {metric} counter")
        for sample in group:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
            lines.append(f"{metric}{{{labels}}} {sample.value:g}")
    return "\n".join(lines) + "\n"


def process_samples() -> Iterator[Sample]:
    """This process's counters of ``fcache`` and ``dcache``."""
    import redis_cache  # noqa: PLC0415 - the singletons, at collection time

    for interface in (redis_cache.fcache, redis_cache.dcache):
        stats: CacheStats = interface.stats()
        callees = {name: c.as_dict() for name, c in stats.callees.items()}
        yield from samples(interface.space, stats.as_dict(), callees)


def register(registry: Any = None) -> Any:
    """Register a collector of this process's counters with a prometheus_client registry."""
    from prometheus_client import REGISTRY  # noqa: PLC0415 - the optional extra
    from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415

    class Collector:
        def collect(self) -> Iterator[Any]:
            families: dict[str, Any] = {}
            for sample in process_samples():
                family = families.get(sample.name)
                if family is None:
                    family = families[sample.name] = CounterMetricFamily(
                        f"redis_cache_{sample.name}",
                        _HELP.get(sample.name, f"The {sample.name} counter of redis_cache."),
                        labels=[k for k, _ in sample.labels],
                    )
                family.add_metric([v for _, v in sample.labels], sample.value)
            yield from families.values()

    collector = Collector()
    (REGISTRY if registry is None else registry).register(collector)
    return collector
