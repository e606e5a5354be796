"""The soak (``tests/test_soak.py``): an operation table, a worker loop, a report aggregator.

Each operation makes one fcache or dcache call and returns what it saw as an
:class:`Observation`. A worker process picks operations by weight and folds what
they saw into a :class:`SoakReport`; the test merges the workers' reports, reads back
from Redis the entries that must be there, and asks the merged report for its
:class:`Verdicts`. The aggregator is pure (no processes, no server), so it is unit
tested on synthetic observations: a checker that cannot fail would prove nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import pickle
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, NamedTuple

import redis

from redis_cache import exceptions
from redis_cache.config import Settings
from redis_cache.interfaces import CacheInterface, DeterministicCache, FastCache
from tests.support.helpers import make_settings

KEYS = 300  # arguments of the recorded functions: small enough that processes collide
RESET_SECONDS = 1.0  # a worker becomes a fresh machine (empty memo and disk) this often
FAIL_OPEN = frozenset({"fcache"})  # serves from local layers: no exception may surface

# --------------------------------------------------------------------------- recorded functions


def soak_expected(x: int) -> tuple[int, str, str]:
    """What fcache's pure soak function returns: every process must get exactly this."""
    return (x, "soak", hashlib.sha256(str(x).encode()).hexdigest()[:16])


def soak_fkernel(x: int) -> tuple[int, str, str]:
    return soak_expected(x)


def soak_finsert(x: int) -> tuple[int, str, str]:  # only a name for fcache.insert keys
    return soak_expected(x)


def soak_dkernel(x: int) -> str:
    """Different in every process and call: a divergence between callers would show."""
    return f"{x}@{os.getpid()}@{time.time_ns()}"


def soak_dinsert(x: int) -> str:  # only a name for dcache.insert keys
    return soak_dkernel(x)


FUNCTIONS: dict[str, Callable[[int], Any]] = {
    fn.__name__: fn for fn in (soak_fkernel, soak_finsert, soak_dkernel, soak_dinsert)
}


def soak_settings(root: Path, url: str, namespace: str, deterministic: bool) -> Settings:
    """Short timeouts so that a 1 s outage is felt, and a dcache deadline that outlasts it."""
    common: dict[str, Any] = {
        "url": url,
        "namespace": namespace,
        "connect_timeout": 0.5,
        "socket_timeout": 1.0,
        "stats_interval": 0,
    }
    if deterministic:
        return make_settings(
            root, deterministic=True, determinism="global", retry_deadline=15.0,
            lock_lease=2.0, lock_timeout=30.0, **common,
        )  # fmt: skip
    return make_settings(root, breaker_cooldown=0.1, breaker_max_cooldown=1.0, **common)


# --------------------------------------------------------------------------- observations


class Entry(NamedTuple):
    """One cache entry: ``fn(x)`` through ``interface``."""

    interface: str
    fn: str
    x: int


@dataclass(frozen=True)
class Observation:
    """What one call saw: ``value`` for ``entry``.

    ``expected``: the only correct value, when the function is pure. ``durable``: the
    caller was told the value is in Redis (a dcache result, an acknowledged insert).
    ``kept_local``: an fcache insert that Redis did not take because it was away.
    """

    entry: Entry
    value: Any
    expected: Any = None
    durable: bool = False
    kept_local: bool = False


@dataclass
class Machine:
    """A worker's caches on one "machine"; replaced by an empty one every RESET_SECONDS."""

    fc: FastCache
    dc: DeterministicCache
    frecord: Callable[[int], Any]
    drecord: Callable[[int], Any]

    @classmethod
    def build(cls, root: Path, url: str, namespace: str) -> Machine:
        fc = FastCache(soak_settings(root, url, namespace, deterministic=False))
        dc = DeterministicCache(soak_settings(root, url, namespace, deterministic=True))
        return cls(fc, dc, fc.record()(soak_fkernel), dc.record()(soak_dkernel))

    def retire(self, report: SoakReport) -> None:
        for cache in (self.fc, self.dc):
            report.counters.setdefault(cache.name, Counter()).update(cache.stats().as_dict())
            cache.close()


# --------------------------------------------------------------------------- operation table


def fcache_record(m: Machine, rng: random.Random) -> Observation:
    x = rng.randrange(KEYS)
    return Observation(Entry("fcache", "soak_fkernel", x), m.frecord(x), soak_expected(x))


def fcache_get(m: Machine, rng: random.Random) -> Observation | None:
    x = rng.randrange(KEYS)
    hit = m.fc.get(soak_fkernel, ((x,), {}))
    if hit is None:
        return None
    return Observation(Entry("fcache", "soak_fkernel", x), hit.value, soak_expected(x))


def fcache_insert(m: Machine, rng: random.Random) -> Observation | None:
    """Redis took the write iff insert returned True and no remote error or skip was counted."""
    y = rng.randrange(10**9)  # nearly always a new key: a real write
    before = m.fc.stats()
    if not m.fc.insert(soak_finsert, ((y,), {}), soak_expected(y)):
        return None
    after = m.fc.stats()
    away = (after.remote_errors, after.remote_skipped) != (
        before.remote_errors, before.remote_skipped,
    )  # fmt: skip
    entry = Entry("fcache", "soak_finsert", y)
    return Observation(entry, soak_expected(y), durable=not away, kept_local=away)


def dcache_record(m: Machine, rng: random.Random) -> Observation:
    x = rng.randrange(KEYS)
    return Observation(Entry("dcache", "soak_dkernel", x), m.drecord(x), durable=True)


def dcache_insert(m: Machine, rng: random.Random) -> Observation | None:
    y = rng.randrange(10**9)
    value = soak_dkernel(y)
    if not m.dc.insert(soak_dinsert, ((y,), {}), value):
        return None
    return Observation(Entry("dcache", "soak_dinsert", y), value, durable=True)


def dcache_get(m: Machine, rng: random.Random) -> Observation | None:
    x = rng.randrange(KEYS)
    hit = m.dc.get(soak_dkernel, ((x,), {}))
    if hit is None:
        return None
    return Observation(Entry("dcache", "soak_dkernel", x), hit.value, durable=True)


class Op(NamedTuple):
    name: str  # "<interface>.<method>"
    weight: float
    run: Callable[[Machine, random.Random], Observation | None]


OPERATIONS = (
    Op("fcache.record", 0.35, fcache_record),
    Op("fcache.insert", 0.10, fcache_insert),
    Op("fcache.get", 0.10, fcache_get),
    Op("dcache.record", 0.30, dcache_record),
    Op("dcache.insert", 0.07, dcache_insert),
    Op("dcache.get", 0.08, dcache_get),
)
CUM_WEIGHTS = list(itertools.accumulate(op.weight for op in OPERATIONS))


# --------------------------------------------------------------------------- worker loop


def soak_worker(
    index: int, url: str, namespace: str, root: str, seconds: float, barrier: Any, out_path: str
) -> None:
    """Process body: weighted random operations for ``seconds``, then the pickled report."""
    rng = random.Random(index)
    base = Path(root) / f"worker-{index}"
    machines = (Machine.build(base / f"round-{n}", url, namespace) for n in itertools.count())
    machine, report = next(machines), SoakReport()
    barrier.wait(timeout=120)
    now = started = time.monotonic()
    next_reset = started + RESET_SECONDS
    while now < started + seconds:
        if now >= next_reset:  # a fresh machine keeps reads reaching Redis
            machine.retire(report)
            machine, next_reset = next(machines), now + RESET_SECONDS
            report.resets += 1
        op = rng.choices(OPERATIONS, cum_weights=CUM_WEIGHTS)[0]
        try:
            report.observe(op.name, op.run(machine, rng))
        except Exception as exc:  # the verdicts decide which exceptions are allowed
            report.failed(op.name, exc)
        now = time.monotonic()
    machine.retire(report)
    Path(out_path).write_bytes(pickle.dumps(report))


@dataclass
class Fleet:
    """The soak's worker processes, started together behind a barrier."""

    procs: list[SpawnProcess]
    outs: list[Path]
    seconds: float

    @classmethod
    def start(cls, workers: int, url: str, namespace: str, root: Path, seconds: float) -> Fleet:
        """Returns once every worker has built its caches (imports take seconds on 2 cores)."""
        spawn = multiprocessing.get_context("spawn")
        barrier = spawn.Barrier(workers + 1)
        outs = [root / f"report-{i}.pickle" for i in range(workers)]
        common = (url, namespace, str(root / "disks"), seconds, barrier)
        procs = [
            spawn.Process(target=soak_worker, args=(i, *common, str(outs[i])))
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        return cls(procs, outs, seconds)

    def collect(self) -> list[SoakReport]:
        """Every worker's report; a worker that hangs or dies fails the soak."""
        for p in self.procs:
            p.join(self.seconds + 120)
        broken = {p.pid: p.exitcode for p in self.procs if p.exitcode != 0}
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        if broken:
            raise RuntimeError(f"soak workers hung (None) or failed, by pid: {broken}")
        return [pickle.loads(out.read_bytes()) for out in self.outs]


# --------------------------------------------------------------------------- report aggregator


@dataclass
class SoakReport:
    """Observations of one worker, or of all of them merged.

    ``values`` counts each value (by ``repr``, which keeps tuple and list apart) seen
    for each entry; ``durable`` are the entries Redis must hold with one of those values.
    """

    ops: Counter[str] = field(default_factory=Counter)
    resets: int = 0
    errors: dict[str, Counter[str]] = field(default_factory=dict)  # interface -> type -> n
    not_system: set[str] = field(default_factory=set)  # types outside redis_cache.SystemError
    samples: dict[str, str] = field(default_factory=dict)  # first message of each error type
    values: dict[Entry, Counter[str]] = field(default_factory=dict)
    expected: dict[Entry, str] = field(default_factory=dict)
    durable: set[Entry] = field(default_factory=set)
    kept_local: int = 0
    counters: dict[str, Counter[str]] = field(default_factory=dict)  # the library's stats

    def observe(self, op: str, seen: Observation | None) -> None:
        self.ops[op] += 1
        if not seen:
            return
        self.values.setdefault(seen.entry, Counter())[repr(seen.value)] += 1
        if seen.expected is not None:
            self.expected[seen.entry] = repr(seen.expected)
        if seen.durable:
            self.durable.add(seen.entry)
        self.kept_local += seen.kept_local

    def failed(self, op: str, exc: Exception) -> None:
        """``op`` (``"<interface>.<method>"``) raised: counted as run, and by exception type."""
        self.ops[op] += 1
        interface = op.partition(".")[0]
        kind = f"{interface} {type(exc).__name__}"
        self.errors.setdefault(interface, Counter())[type(exc).__name__] += 1
        self.samples.setdefault(kind, f"{kind}: {exc}")
        if not isinstance(exc, exceptions.SystemError):
            self.not_system.add(kind)

    @classmethod
    def merge(cls, reports: Iterable[SoakReport]) -> SoakReport:
        total = cls()
        for r in reports:
            total.ops += r.ops
            total.resets += r.resets
            total.kept_local += r.kept_local
            total.not_system |= r.not_system
            total.durable |= r.durable
            total.expected.update(r.expected)
            total.samples = r.samples | total.samples
            for mine, theirs in ((total.errors, r.errors), (total.counters, r.counters),
                                 (total.values, r.values)):  # fmt: skip
                for key, counts in theirs.items():
                    mine.setdefault(key, Counter()).update(counts)
        return total

    def verdicts(self, held: Mapping[Entry, str | None]) -> Verdicts:
        """Judge against ``held``: the ``repr`` of what Redis holds for each durable entry."""
        verdicts = Verdicts(self)
        for entry, counts in self.values.items():
            wrong = {v: n for v, n in counts.items() if v != self.expected.get(entry, v)}
            if wrong:
                verdicts.wrong[entry] = wrong
            if len(counts) > 1:
                verdicts.diverged[entry] = sorted(counts)
        for entry in self.durable:
            value = held.get(entry)
            if value is None:
                verdicts.lost[entry] = sorted(self.values[entry])
            elif value not in self.values[entry]:
                verdicts.mismatched[entry] = (sorted(self.values[entry]), value)
        return verdicts


@dataclass
class Verdicts:
    """What the soak found wrong; :meth:`failures` is empty when every promise held."""

    report: SoakReport
    wrong: dict[Entry, dict[str, int]] = field(default_factory=dict)  # not the pure result
    diverged: dict[Entry, list[str]] = field(default_factory=dict)  # callers saw two values
    lost: dict[Entry, list[str]] = field(default_factory=dict)  # durable, gone from Redis
    mismatched: dict[Entry, tuple[list[str], str]] = field(default_factory=dict)  # Redis differs

    def lost_or_mismatched(self, fn: str) -> int:
        return sum(e.fn == fn for e in itertools.chain(self.lost, self.mismatched))

    def failures(self) -> list[str]:
        """One line per broken promise, and one if the run was too thin to judge."""
        r = self.report
        found = {
            "fail-open interfaces surfaced exceptions": {
                i: dict(c) for i, c in r.errors.items() if i in FAIL_OPEN and c
            },
            "exceptions that are not redis_cache.SystemError": sorted(r.not_system),
            "calls given a wrong value (entry: value: calls)": self.wrong,
            "entries that gave callers more than one value": self.diverged,
            "durable entries lost from Redis": self.lost,
            "durable entries Redis holds with another value": self.mismatched,
            "operations that never ran": [op.name for op in OPERATIONS if not r.ops[op.name]],
            "functions with no durable entry to check": sorted(
                {"soak_dkernel", "soak_dinsert", "soak_finsert"} - {e.fn for e in r.durable}
            ),
        }
        lines = [f"{what}: {_head(items)}" for what, items in found.items() if items]
        if lines and r.samples:
            lines.append(f"first message of each exception type: {_head(r.samples)}")
        return lines

    def figures(self) -> dict[str, Any]:
        """The soak's published figures (docs/reliability.md), from the merged report."""
        r = self.report
        durable = Counter(e.fn for e in r.durable)
        return {
            "key_space": KEYS,
            "operations": sum(r.ops.values()),
            "operations_by_kind": {**r.ops, "machine_resets": r.resets},
            "errors_surfaced": {i: sum(r.errors.get(i, {}).values()) for i in ("fcache", "dcache")},
            "errors_by_type": {i: dict(r.errors.get(i, {})) for i in ("fcache", "dcache")},
            "fcache_wrong_values": sum(n for wrong in self.wrong.values() for n in wrong.values()),
            "dcache_keys": sum(e.fn == "soak_dkernel" for e in r.values),
            "dcache_keys_with_diverging_values": sum(e.fn == "soak_dkernel" for e in self.diverged),
            "entries_lost": {
                "dcache_results": self.lost_or_mismatched("soak_dkernel"),
                "dcache_inserts_acknowledged": self.lost_or_mismatched("soak_dinsert"),
                "fcache_inserts_acknowledged_by_redis": self.lost_or_mismatched("soak_finsert"),
            },
            "acknowledged_writes_checked": {
                "dcache_results": durable["soak_dkernel"],
                "dcache_inserts": durable["soak_dinsert"],
                "fcache_inserts": durable["soak_finsert"],
            },
            "fcache_inserts_kept_local_while_redis_was_away": r.kept_local,
            "counters": {
                i: {name: round(n, 3) for name, n in sorted(r.counters.get(i, {}).items())}
                for i in ("fcache", "dcache")
            },
        }


def _head(items: Any, n: int = 10) -> str:
    """How many, and the first ``n``: failure messages stay readable."""
    pairs = sorted(items.items() if isinstance(items, dict) else items)
    return f"{len(pairs)}: {pairs[:n]}"


def read_redis(
    client: redis.Redis, caches: Mapping[str, CacheInterface], entries: Iterable[Entry]
) -> dict[Entry, str | None]:
    """The ``repr`` of what Redis holds for each entry (``None``: absent).

    Raw pipelined GETs decoded with the interface's codec, not ``get``: the oracle must
    not go through the layers it judges.
    """
    runtimes = {name: cache._runtime() for name, cache in caches.items()}
    held: dict[Entry, str | None] = {}
    todo = list(entries)
    for start in range(0, len(todo), 1000):
        chunk = todo[start : start + 1000]
        keys = [caches[e.interface].entry_key(FUNCTIONS[e.fn], ((e.x,), {})) for e in chunk]
        pipe = client.pipeline(transaction=False)
        for e, key in zip(chunk, keys, strict=True):
            pipe.get(runtimes[e.interface].redis.value_key(key))
        for e, key, blob in zip(chunk, keys, pipe.execute(), strict=True):
            codec = runtimes[e.interface].codec
            held[e] = None if blob is None else repr(codec.decode(key.key_id, blob))
    return held
