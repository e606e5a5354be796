"""Stampede: how fast waiters wake up when the one computing worker commits.

    python -m bench.bench_stampede [--quick] [--out bench/results] [--waiters 16]

``waiters + 1`` spawned processes (each its own disk dir) meet on a barrier and call
``dcache.record`` (global determinism) on the same missing key; one takes the lease
and computes (sleep 0.3 s), the others block. Per waiter we measure the time from the
writer's commit to the waiter's return: the computing process stamps
``time.monotonic_ns()`` in its result encoder, i.e. immediately after the function
returned (the COMMIT script follows within one round trip); each waiter stamps its own
return. ``CLOCK_MONOTONIC`` is one clock for all processes of the machine.

Baseline, in alternate rounds with the same processes: raw redis-py doing the minimal
version of the same protocol: ``GET`` (nil), ``SET lock NX PX``; the winner sleeps,
stamps, and commits ``SET NX`` value + ``DEL`` lock + wake-up token in one
``MULTI``/``EXEC``; the others block in ``BRPOPLPUSH signal signal`` and then ``GET``.

Figures: p50 and p99 over all waiters of all rounds; spread: p10..p90 of the same
statistic over 1,000 bootstrap resamples of the rounds (and of the ratio, resampling
dcache and raw rounds in pairs).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Options, Row, Timing, quantile, report, rows_json, save
from tests.support.servers import RedisServer

NAMESPACE = "bench-stampede"
COMPUTE_SECONDS = 0.3
VALUE = b"k" * 10 * 1024


def stampede_kernel(tag: str, run: str, r: int) -> bytes:
    if tag == "round":
        time.sleep(COMPUTE_SECONDS)
    return VALUE


stampede_kernel.__module__ = "bench_stampede"  # same key in parent and spawned children


def _raw_round(client: Any, run: str, r: int) -> tuple[int | None, int]:
    """The minimal Redis wake-up protocol; returns (commit stamp if we computed, return)."""
    base = f"rawstampede:{run}:{r}"
    value_key, lock_key, signal_key = f"{base}:value", f"{base}:lock", f"{base}:signal"
    stamp = None
    if client.get(value_key) is None:
        if client.set(lock_key, secrets.token_hex(8), nx=True, px=30_000):
            time.sleep(COMPUTE_SECONDS)
            stamp = time.monotonic_ns()
            pipe = client.pipeline(transaction=True)
            pipe.set(value_key, VALUE, nx=True)
            pipe.delete(lock_key)
            pipe.delete(signal_key)
            pipe.rpush(signal_key, 1)
            pipe.pexpire(signal_key, 60_000)
            pipe.execute()
        else:
            while True:
                client.brpoplpush(signal_key, signal_key, 2)
                if client.get(value_key) is not None:
                    break
    return stamp, time.monotonic_ns()


def _instrument(marks: dict[str, int]) -> None:
    from redis_cache import lease  # noqa: PLC0415

    cls = getattr(lease, "Lease", None)
    original_commit = getattr(cls, "commit", None)
    original_wait = getattr(cls, "wait", None)
    if cls is None or original_commit is None or original_wait is None:
        return

    def commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_commit(self, *args, **kwargs)
        marks["commit_returned"] = time.monotonic_ns()
        return result

    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_wait(self, *args, **kwargs)
        marks["signal_returned"] = time.monotonic_ns()
        marks["waits"] = marks.get("waits", 0) + 1
        return result

    cls.commit = commit
    cls.wait = wait


def worker(
    index: int, url: str, run: str, schedule: list[tuple[str, int]], barrier: Any, results: Any
) -> None:
    import redis  # noqa: PLC0415

    from redis_cache.config import Settings  # noqa: PLC0415
    from redis_cache.interfaces import DeterministicCache  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-stampede-"))
    settings = Settings(
        dir=root, url=url, namespace=NAMESPACE, deterministic=True, determinism="global"
    )
    cache = DeterministicCache(settings)
    stamps: list[int] = []

    def encoder(result: bytes) -> bytes:
        stamps.append(time.monotonic_ns())  # fn just returned in the computing process
        return result

    recorded = cache.record(custom_result_encoder=encoder, custom_result_decoder=lambda v: v)(
        stampede_kernel
    )
    # Diagnostics (wrappers in this process only): when COMMIT returned in the writer,
    # and when the last wait for the wake-up signal returned in a waiter. They wrap the
    # lease's internals; where those are named otherwise the phases are just not shown.
    marks: dict[str, int] = {}
    _instrument(marks)
    recorded("warm", run, index)  # connect, check consistency, load the Lua scripts
    client = redis.Redis.from_url(url, protocol=2, socket_timeout=10)
    client.ping()
    try:
        for kind, r in schedule:
            barrier.wait()
            marks.clear()
            if kind == "dcache":
                stamps.clear()
                start = time.monotonic_ns()
                value = recorded("round", run, r)
                end = time.monotonic_ns()
                stamp = stamps[0] if stamps else None
            else:
                start = time.monotonic_ns()
                stamp, end = _raw_round(client, run, r)
                value = VALUE
            assert value == VALUE
            results.put((kind, r, index, start, end, stamp, dict(marks)))
    finally:
        cache.close()
        client.close()
        shutil.rmtree(root, ignore_errors=True)


def measure(url: str, opts: Options, waiters: int) -> dict[str, Any]:
    rounds = opts.n(20, 2)
    processes = waiters + 1
    run = secrets.token_hex(4)
    schedule = []
    for r in range(rounds):
        kinds = ("dcache", "raw") if r % 2 == 0 else ("raw", "dcache")
        schedule += [(kind, r) for kind in kinds]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(i, url, run, schedule, barrier, results), daemon=True)
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    collected = []
    deadline = time.monotonic() + 120 + len(schedule) * (COMPUTE_SECONDS + 2) * 2
    while len(collected) < processes * len(schedule):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (not any(p.is_alive() for p in procs) and results.empty()):
            raise RuntimeError("stampede workers stopped early")
        with contextlib.suppress(Exception):
            collected.append(results.get(timeout=min(remaining, 5)))
    for p in procs:
        p.join(30)
    return {"rounds": rounds, "waiters": waiters, "processes": processes, "results": collected}


def _phases(results: list[Any]) -> dict[str, dict[str, float]]:
    """dcache's wake-up split in three (ms): writer's stamp -> its COMMIT returned;
    stamp -> the waiter's last wait for the signal returned; that -> the waiter's return."""
    commits = {
        r: (stamp, marks)
        for kind, r, _i, _s, _e, stamp, marks in results
        if kind == "dcache" and stamp is not None
    }
    phases: dict[str, list[float]] = {
        "writer: stamp -> COMMIT returned": [],
        "waiter: stamp -> signal wait returned": [],
        "waiter: signal wait returned -> record() returned": [],
    }
    waits = []
    for kind, r, _index, start, end, stamp, marks in results:
        if kind != "dcache" or stamp is not None or r not in commits:
            continue
        commit_stamp, writer = commits[r]
        if start >= commit_stamp or "signal_returned" not in marks:
            continue
        if "commit_returned" in writer:
            phases["writer: stamp -> COMMIT returned"].append(
                (writer["commit_returned"] - commit_stamp) / 1e6
            )
        phases["waiter: stamp -> signal wait returned"].append(
            (marks["signal_returned"] - commit_stamp) / 1e6
        )
        phases["waiter: signal wait returned -> record() returned"].append(
            (end - marks["signal_returned"]) / 1e6
        )
        waits.append(float(marks.get("waits", 0)))
    out = {
        name: {
            "p50": quantile(xs, 0.5),
            "p90": quantile(xs, 0.9),
            "p99": quantile(xs, 0.99),
            "max": max(xs),
        }
        for name, xs in phases.items()
        if xs
    }
    if waits:
        out["blocking waits per waiter"] = {"p50": quantile(waits, 0.5), "max": max(waits)}
    return out


def _pooled(rounds: list[list[float]], q: float) -> float:
    return quantile([x for r in rounds for x in r], q)


def summarize(measured: dict[str, Any]) -> tuple[list[Row], dict[str, Any]]:
    by_round: dict[tuple[str, int], list[tuple[int, int, int, int | None]]] = {}
    for kind, r, index, start, end, stamp, _marks in measured["results"]:
        by_round.setdefault((kind, r), []).append((index, start, end, stamp))
    diagnostics = _phases(measured["results"])
    per_round: dict[str, dict[int, list[float]]] = {"dcache": {}, "raw": {}}
    problems: list[str] = []
    late = {"dcache": 0, "raw": 0}
    for (kind, r), entries in sorted(by_round.items()):
        writers = [e for e in entries if e[3] is not None]
        if len(writers) != 1:
            problems.append(f"{kind} round {r}: {len(writers)} processes computed")
            continue
        commit = writers[0][3]
        assert commit is not None
        lat = []
        for _index, start, end, stamp in entries:
            if stamp is not None:
                continue
            if start >= commit:  # called after the commit: not a waiter
                late[kind] += 1
                continue
            lat.append((end - commit) / 1e6)
        if lat:
            per_round[kind][r] = lat
    # Rounds where both protocols have waiters, paired by round number (they alternate).
    paired = sorted(set(per_round["dcache"]) & set(per_round["raw"]))
    rounds = {kind: [per_round[kind][r] for r in paired] for kind in ("dcache", "raw")}
    rng = random.Random(20260501)
    resamples = [[rng.randrange(len(paired)) for _ in paired] for _ in range(1000)]
    rows = []
    waiters = measured["waiters"]
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        boot = {
            kind: [_pooled([rounds[kind][i] for i in pick], q) for pick in resamples]
            for kind in ("dcache", "raw")
        }
        t = {
            kind: Timing(
                name=f"{'raw redis-py' if kind == 'raw' else 'dcache'} wake-up {label}",
                median=_pooled(rounds[kind], q),
                p10=quantile(boot[kind], 0.1),
                p90=quantile(boot[kind], 0.9),
                unit="ms",
            )
            for kind in ("raw", "dcache")
        }
        ratios = [c / b for b, c in zip(boot["raw"], boot["dcache"], strict=True) if b > 0]
        rows.append(
            Row(
                benchmark=f"stampede wake-up ({waiters} waiters)",
                case=label,
                candidate=t["dcache"],
                baseline=t["raw"],
                ratio=t["dcache"].median / t["raw"].median,
                ratio_p10=quantile(ratios, 0.1),
                ratio_p90=quantile(ratios, 0.9),
                note="ms from the writer's commit to the waiter's return; spread: p10..p90 "
                "over 1,000 bootstrap resamples of the rounds",
            )
        )
    latencies = {kind: [x for r in rounds[kind] for x in r] for kind in ("dcache", "raw")}
    extra = {
        "latencies_ms": latencies,
        "problems": problems,
        "late_arrivals": late,
        "per_round_ms": {k: {str(r): v for r, v in d.items()} for k, d in per_round.items()},
        "dcache_phases_ms": diagnostics,
    }
    return rows, extra


@contextlib.contextmanager
def _url(server: RedisServer | None) -> Iterator[str]:
    if server is not None:
        yield server.url
        return
    with RedisServer(config=["maxmemory-policy noeviction"]) as own:
        yield own.url


def run(
    opts: Options, server: RedisServer | None = None, waiters: int | None = None
) -> dict[str, list[Row]]:
    waiters = waiters if waiters is not None else opts.n(16, 4)
    with _url(server) as url:
        measured = measure(url, opts, waiters)
    rows, extra = summarize(measured)
    report(f"6. stampede: wake-up latency, {waiters} waiters + 1 writer (dcache vs raw)", rows)
    if extra["problems"]:
        print("  PROBLEMS:", "; ".join(extra["problems"]))
    print(f"  late arrivals (called after the commit, excluded): {extra['late_arrivals']}")
    for name, q in extra["dcache_phases_ms"].items():
        print(f"  dcache {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in q.items()))
    save(
        "stampede",
        {
            "rows": rows_json(rows),
            **extra,
            "rounds": measured["rounds"],
            "waiters": waiters,
            "compute_seconds": COMPUTE_SECONDS,
        },
        opts.out,
    )
    return {"stampede": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Options().out)
    parser.add_argument("--waiters", type=int, default=None)
    args = parser.parse_args()
    run(Options(quick=args.quick, out=args.out), waiters=args.waiters)


if __name__ == "__main__":
    main()
