"""Throughput with 1, 2, 4 and 8 spawned worker processes at a 90 % hit rate.

    python -m bench.bench_throughput [--quick] [--out bench/results]

Every worker is its own "machine": its own disk dir. All workers run the same schedule
of timed windows, started together on a barrier; the modes alternate window by window
(rotated each repeat) so that outside load hits all of them alike. In a window a worker
replays a fixed pseudo-random operation stream over 1,000 pre-populated keys (10 KiB
values): 90 % of the operations read one of those keys, 10 % a key nobody has yet.

- ``raw``: redis-py doing the same operations: a hit is ``GET``; a miss is ``GET``
  (nil) + ``SET NX``.
- ``fcache`` (a, realistic): ``fcache.record`` with memo and disk on, in the steady state
  of a worker that has seen its keys: before the window (untimed) it reads each of the
  1,000 keys once (remote hit, backfilled to disk) and waits for the backfill, so in
  the window every hit is a memo hit; a miss computes (returns the value at once) and
  inserts into Redis, memo and (off the caller's path) disk.
- ``fcache-cold`` (b, the remote path): the same calls with the memo (and the record
  wrapper's index) cleared before every call and nothing copied to disk (the disk
  bound ``REDIS_CACHE_DISK_MAX_BYTES`` set to one byte), so
  every hit is a Redis ``GET`` and every miss a memo/disk/Redis miss + insert: the
  operations of ``raw`` plus what fcache adds to each.

Figures: aggregate ops/s (sum over workers of operations / window), median and
p10..p90 over repeats; ratios are fcache ops/s ÷ raw ops/s of the same repeat
(higher is better; no target was set).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    Options,
    Row,
    Timing,
    command_line,
    landed_on_disk,
    quantile,
    report,
    rows_json,
    save,
)
from tests.support.servers import RedisServer

PROCESS_COUNTS = (1, 2, 4, 8)
MODES = ("raw", "fcache", "fcache-cold")
KEYS = 1000
VALUE_SIZE = 10 * 1024
HIT_RATE = 0.9
NAMESPACE = "bench-tp"
STREAM_LENGTH = 100_000


def hit_kernel(k: int) -> bytes:
    raise AssertionError("hit keys are pre-populated: never computed")


def miss_kernel(tag: str, i: int) -> bytes:
    return _VALUE


_VALUE = os.urandom(VALUE_SIZE)  # incompressible, like the hit values
# The key includes the callee's module: keep it the same in the parent and in spawned
# children, whether this file runs as __main__, __mp_main__ or bench_throughput.
hit_kernel.__module__ = miss_kernel.__module__ = "bench_throughput"


def _stream(seed: int, keys: int) -> list[int]:
    """Operation stream: a key index for a hit, -1 for a miss."""
    rng = random.Random(seed)
    return [rng.randrange(keys) if rng.random() < HIT_RATE else -1 for _ in range(STREAM_LENGTH)]


def _settings(url: str, root: Path, cold: bool = False) -> Any:
    """A worker's settings; ``cold``: no entry is copied to disk (a one-byte disk bound)."""
    from redis_cache.config import Settings  # noqa: PLC0415

    extra = {"disk_max_bytes": 1} if cold else {}
    return Settings(dir=root, url=url, namespace=NAMESPACE, stats_interval=0, **extra)


def _run_raw(client: Any, ops: list[int], tag: str, seconds: float) -> tuple[int, float]:
    value = _VALUE
    hit_names = [f"raw:hit:{k}" for k in range(max(ops) + 1)]
    get, set_ = client.get, client.set
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for k in ops[done % STREAM_LENGTH : done % STREAM_LENGTH + 1000]:
            if k >= 0:
                get(hit_names[k])
            else:
                name = f"raw:miss:{tag}:{done}"
                get(name)
                set_(name, value, nx=True)
            done += 1
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


class _FcacheRun:
    """fcache wrappers for one window, prepared (and for ``fcache`` warmed) before it."""

    def __init__(self, cache: Any, cold: bool, keys: int) -> None:
        self.cache = cache
        self.cold = cold
        self.hit = cache.record()(hit_kernel)
        self.miss = cache.record()(miss_kernel)
        self.memo = cache._runtime().memo
        if not cold:
            # Steady state of a worker that has seen its keys before: every hit key is in
            # the memo (and backfilled to this machine's disk) before the window starts.
            for k in range(keys):
                self.hit(k)
            if not landed_on_disk(cache, hit_kernel, [((k,), {}) for k in range(keys)]):
                raise RuntimeError("the hit keys were never backfilled to disk")
        self.before = cache.stats()  # count the window only

    def run(self, ops: list[int], tag: str, seconds: float) -> tuple[int, float]:
        hit, miss, cold, memo = self.hit, self.miss, self.cold, self.memo
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for k in ops[done % STREAM_LENGTH : done % STREAM_LENGTH + 1000]:
                if cold:
                    memo.clear()  # and with it the wrappers' indexes
                if k >= 0:
                    hit(k)
                else:
                    miss(tag, done)
                done += 1
            now = time.perf_counter()
            if now >= deadline:
                return done, now - start

    def detail(self) -> dict[str, int]:
        after, before = self.cache.stats(), self.before
        memo = after.memo_hits - before.memo_hits
        disk = after.disk_hits - before.disk_hits
        remote = after.remote_hits - before.remote_hits
        return {
            "memo": memo,
            "disk": disk,
            "remote": remote,
            "misses": after.misses - before.misses,
            "hits": memo + disk + remote,
        }


def worker(
    index: int,
    url: str,
    keys: int,
    phases: list[tuple[int, list[tuple[str, int]]]],
    seconds: float,
    phase_barrier: Any,
    barriers: dict[int, Any],
    results: Any,
) -> None:
    """One machine. For each phase (process count P), workers 0..P-1 run every
    (mode, repeat) window of the schedule and report their counts; the others wait."""
    import redis  # noqa: PLC0415

    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    client = redis.Redis.from_url(url, protocol=2)
    client.ping()
    for processes, schedule in phases:
        phase_barrier.wait()
        if index >= processes:
            continue
        barrier = barriers[processes]
        ops = _stream(1000 * processes + index, keys)
        for mode, rep in schedule:
            tag = f"{processes}-{index}-{mode}-{rep}"
            root = Path(tempfile.mkdtemp(prefix="bench-tp-"))
            cache = prepared = None
            if mode != "raw":
                cold = mode == "fcache-cold"
                cache = FastCache(_settings(url, root, cold=cold))
                cache.get(hit_kernel, ((-1,), {}))  # a miss: connects before the window
                prepared = _FcacheRun(cache, cold=cold, keys=keys)
            barrier.wait()
            if cache is None or prepared is None:
                count, elapsed = _run_raw(client, ops, tag, seconds)
                detail = {}
            else:
                count, elapsed = prepared.run(ops, tag, seconds)
                detail = prepared.detail()
                cache.close()
            results.put((processes, mode, rep, index, count, elapsed, detail))
            barrier.wait()
            if index == 0:  # drop this window's new keys (not timed)
                # (fcache's key names carry the namespace and the callee's name)
                for pattern in ("raw:miss:*", f"*{NAMESPACE}*miss_kernel*"):
                    names = list(client.scan_iter(match=pattern, count=1000))
                    for i in range(0, len(names), 1000):
                        client.unlink(*names[i : i + 1000])
            barrier.wait()
            shutil.rmtree(root, ignore_errors=True)
    client.close()


def _populate(url: str, keys: int) -> None:
    """The hit keys for fcache (through insert) and the same bytes under raw names."""
    import redis  # noqa: PLC0415

    from redis_cache.interfaces import FastCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-tp-pop-"))
    cache = FastCache(_settings(url, root))
    client = redis.Redis.from_url(url, protocol=2)
    pipe = client.pipeline(transaction=False)
    for k in range(keys):
        value = os.urandom(VALUE_SIZE)
        cache.insert(hit_kernel, ((k,), {}), value)
        pipe.set(f"raw:hit:{k}", value)
    pipe.execute()
    cache.close()
    client.close()
    shutil.rmtree(root, ignore_errors=True)


def measure(url: str, opts: Options) -> dict[str, Any]:
    repeats = opts.n(7, 1)
    seconds = 1.5 if not opts.quick else 0.2
    counts = PROCESS_COUNTS
    keys = opts.n(KEYS, 200)
    ctx = multiprocessing.get_context("spawn")
    _populate(url, keys)
    schedule = []
    for rep in range(repeats):
        shift = rep % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            schedule.append((mode, rep))
    phases = [(processes, schedule) for processes in counts]
    workers = max(counts)
    phase_barrier = ctx.Barrier(workers)
    barriers = {processes: ctx.Barrier(processes) for processes in counts}
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker,
            args=(i, url, keys, phases, seconds, phase_barrier, barriers, results),
            daemon=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    expected = sum(processes * len(schedule) for processes in counts)
    collected: list[Any] = []
    deadline = time.monotonic() + 120 + expected * seconds * 2
    while len(collected) < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (not any(p.is_alive() for p in procs) and results.empty()):
            raise RuntimeError(f"throughput workers stopped early ({len(collected)}/{expected})")
        with contextlib.suppress(Exception):
            collected.append(results.get(timeout=min(remaining, 5)))
    for p in procs:
        p.join(30)
    windows: dict[str, list[Any]] = {str(p): [] for p in counts}
    for processes, *rest in collected:
        windows[str(processes)].append(rest)
    return {
        "repeats": repeats,
        "seconds": seconds,
        "keys": keys,
        "schedule": schedule,
        "windows": windows,
    }


def summarize(measured: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    series: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    hit_mix: dict[str, dict[str, int]] = {}
    for processes_text, windows in measured["windows"].items():
        processes = int(processes_text)
        per: dict[tuple[str, int], float] = {}
        for mode, rep, _index, count, elapsed, detail in windows:
            per[(mode, rep)] = per.get((mode, rep), 0.0) + count / elapsed
            if detail:
                mix = hit_mix.setdefault(f"{mode} P={processes}", {})
                for k, v in detail.items():
                    mix[k] = mix.get(k, 0) + v
        reps = sorted({rep for _, rep in per})
        timings = {
            mode: Timing.of(f"{mode} ops/s", [per[(mode, r)] for r in reps], unit="ops/s")
            for mode in MODES
        }
        for mode in MODES:
            series[mode][processes] = timings[mode]
        for mode, label in (("fcache", "(a) realistic, memo on"), ("fcache-cold", "(b) cold")):
            ratios = [per[(mode, r)] / per[("raw", r)] for r in reps]
            rows.append(
                Row(
                    benchmark=f"throughput {label}",
                    case=f"{processes} proc",
                    candidate=timings[mode],
                    baseline=timings["raw"],
                    ratio=statistics.median(ratios),
                    ratio_p10=quantile(ratios, 0.1),
                    ratio_p90=quantile(ratios, 0.9),
                    ratio_label="ops/s ratio",
                    note="fcache ops/s ÷ raw ops/s, higher is better",
                )
            )
    return rows, {"series": series, "hit_mix": hit_mix}


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with RedisServer(config=["maxmemory-policy noeviction"]) as server:
        yield server.url


def run(opts: Options, server: RedisServer | None = None) -> dict[str, list[Row]]:
    with _server(server.url if server is not None else None) as url:
        measured = measure(url, opts)
    rows, extra = summarize(measured)
    report("9. throughput at 90% hits, spawned processes (ops/s, ratio vs raw redis-py)", rows)
    for mix_name, mix in extra["hit_mix"].items():
        total = mix["hits"] + mix["misses"]
        print(
            f"  {mix_name}: memo {mix['memo'] / total:.1%} disk {mix['disk'] / total:.1%} "
            f"remote {mix['remote'] / total:.1%} miss {mix['misses'] / total:.1%}"
        )
    series = {mode: {str(p): t for p, t in by_p.items()} for mode, by_p in extra["series"].items()}
    save(
        "throughput",
        {
            "rows": rows_json(rows),
            "series": series,
            "hit_mix": extra["hit_mix"],
            "repeats": measured["repeats"],
            "keys": measured["keys"],
            "seconds": measured["seconds"],
            "windows": measured["windows"],
        },
        opts.out,
    )
    return {"throughput": rows}


if __name__ == "__main__":
    command_line(run, __doc__)
