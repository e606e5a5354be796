"""``redis-cache demo``: a small compile farm showing which layer serves each call.

Workers are separate processes (spawned, as a farm's would be) calling a slow,
pure "compile" through the interface ``icache`` would be. Without
``REDIS_CACHE_URL`` they share the disk layer of one machine; with it, each worker
is a machine of its own (own disk directory) and they share the redis layer.

A process pool runs them: a worker's exception reaches the parent as soon as it
is raised (one line, no traceback) and stops the farm; a worker that dies
breaks the pool at once. The summary counts remote errors and calls that
skipped the remote layer, and the demo exits 1 when the remote layer failed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
import multiprocessing
import os
import random
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from . import config, interfaces

_compile_seconds = 0.3  # set in each worker process
DEMO_NAMESPACE = "redis-cache-demo"
MAX_WORKERS = 64
MAX_SECONDS = 600.0


class DemoWorkerError(Exception):
    """A worker's failure, flattened to one picklable line for the parent."""


def compile_kernel(op: str, m: int, n: int) -> dict[str, object]:
    """Stands in for an expensive, pure compilation (sleeps, then returns a 'binary')."""
    time.sleep(_compile_seconds)
    binary = hashlib.sha256(f"{op}:{m}x{n}".encode()).digest() * 8
    return {"op": op, "shape": (m, n), "binary": binary, "registers": (m * n) % 255}


@dataclass(frozen=True)
class CallReport:
    worker: int
    kernel: str
    served_by: str
    seconds: float


@dataclass(frozen=True)
class WorkerReport:
    worker: int
    calls: list[CallReport]
    remote_errors: int
    remote_skipped: int


def _served_by(before: dict[str, float], after: dict[str, float]) -> str:
    for counter, label in (
        ("memo_hits", "memo"),
        ("disk_hits", "disk"),
        ("remote_hits", "redis"),
        ("computations", "compiled"),
    ):
        if after[counter] > before[counter]:
            return label
    return "waited"  # another process compiled it while we held back (single flight)


def _worker(
    index: int, kernels: list[tuple[str, int, int]], compile_seconds: float, disk: str
) -> WorkerReport:
    """One farm worker: its own interface object, so a reused pool process starts cold too."""
    global _compile_seconds
    _compile_seconds = compile_seconds
    try:
        settings = dataclasses.replace(config.load(), dir=Path(disk))
        kind = interfaces.DeterministicCache if settings.deterministic else interfaces.FastCache
        cache = kind(settings)
        try:
            return _calls(index, cache, kernels)
        finally:
            cache.close()
    except Exception as exc:  # the parent prints it: one line, never a traceback
        raise DemoWorkerError(f"{type(exc).__name__}: {exc}") from None


def _calls(
    index: int, cache: interfaces.CacheInterface, kernels: list[tuple[str, int, int]]
) -> WorkerReport:
    compile_cached = cache.record()(compile_kernel)
    # Connect (and, for dcache, check the server) before timing anything.
    cache.get(compile_kernel, (("warm-up", 0, 0), {}))
    order = kernels * 2
    random.Random(index).shuffle(order)
    calls = []
    for op, m, n in order:
        before = cache.stats().as_dict()
        started = time.perf_counter()
        compile_cached(op, m, n)
        elapsed = time.perf_counter() - started
        served = _served_by(before, cache.stats().as_dict())
        calls.append(CallReport(index, f"{op}({m}x{n})", served, elapsed))
    stats = cache.stats()
    return WorkerReport(index, calls, stats.remote_errors, stats.remote_skipped)


def check_arguments(workers: int, kernels: int, compile_seconds: float) -> None:
    """Refuse what would hang or mean nothing, naming the option (exit 2 on the CLI)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    if kernels < 1:
        raise ValueError(f"--kernels must be at least 1, not {kernels}")
    if not (math.isfinite(compile_seconds) and 0 <= compile_seconds <= MAX_SECONDS):
        raise ValueError(f"--seconds must be between 0 and {MAX_SECONDS:g}, not {compile_seconds}")


def run(workers: int = 4, kernels: int = 6, compile_seconds: float = 0.3) -> int:
    check_arguments(workers, kernels, compile_seconds)
    settings = _demo_settings()
    disk_root = os.environ["REDIS_CACHE_DIR"]
    _introduce(settings, workers, kernels, compile_seconds, disk_root)
    ops = ["matmul", "conv2d", "softmax", "layernorm", "attention", "gelu", "reduce", "scan"]
    specs = [(ops[i % len(ops)], 64 << (i % 4), 32 << (i % 3)) for i in range(kernels)]

    def disk_of(index: int) -> str:
        return os.path.join(disk_root, f"machine-{index}") if settings.has_remote else disk_root

    started = time.perf_counter()
    reports: list[WorkerReport] = []
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        futures = [
            pool.submit(_worker, i, specs, compile_seconds, disk_of(i)) for i in range(workers)
        ]
        for future in concurrent.futures.as_completed(futures):
            report = future.result()  # a worker's exception surfaces here, at once
            reports.append(report)
            for call in report.calls:
                print(
                    f"  worker {call.worker}: {call.kernel:<22} {call.served_by:<9} "
                    f"{call.seconds * 1000:8.1f} ms"
                )
    except (DemoWorkerError, BrokenProcessPool) as exc:
        _stop(pool)
        reason = str(exc) if isinstance(exc, DemoWorkerError) else "a worker process died"
        print(f"redis-cache demo: a worker failed: {reason}")
        return 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return _summary(reports, compile_seconds, time.perf_counter() - started, settings.has_remote)


def _demo_settings() -> config.Settings:
    """The workers' settings, on a fresh disk directory and, with Redis, a namespace of
    the demo's own: a demo starts cold and never mixes its entries into real ones."""
    settings = config.current()
    if not os.environ.get("REDIS_CACHE_DIR"):
        os.environ["REDIS_CACHE_DIR"] = tempfile.mkdtemp(prefix="redis-cache-demo-")
    if settings.has_remote and not os.environ.get("REDIS_CACHE_NAMESPACE"):
        os.environ["REDIS_CACHE_NAMESPACE"] = DEMO_NAMESPACE
        os.environ.setdefault("REDIS_CACHE_TTL", "3600")  # fcache entries expire
    config.reset()
    return config.current()


def _introduce(
    settings: config.Settings, workers: int, kernels: int, seconds: float, disk_root: str
) -> None:
    mode = "dcache (deterministic)" if settings.deterministic else "fcache"
    remote = settings.server_name if settings.has_remote else "none (memo + disk only)"
    print(f"redis-cache demo: {workers} workers, {kernels} kernels, {seconds:g}s per compile")
    print(f"  interface: icache = {mode}; remote layer: {remote}")
    print(f"  disk layer: {disk_root}")
    if settings.has_remote:
        print(f"  namespace: {settings.namespace}")
        print("  each worker simulates its own machine: own disk, shared redis")


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """End every worker now: the others may be waiting on the failed one's lock."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()


def _summary(
    reports: list[WorkerReport], compile_seconds: float, wall: float, has_remote: bool
) -> int:
    calls = [c for r in reports for c in r.calls]
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.served_by] = counts.get(c.served_by, 0) + 1
    compiled = counts.get("compiled", 0)
    naive = len(calls) * compile_seconds
    spent = sum(c.seconds for c in calls)
    errors = sum(r.remote_errors for r in reports)
    skipped = sum(r.remote_skipped for r in reports)
    print("summary:")
    print(
        f"  calls: {len(calls)}; served by "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    print(f"  compilations: {compiled} (without a cache: {len(calls)})")
    print(
        f"  time in calls: {spent:.1f}s; without a cache: {naive:.1f}s; saved {naive - spent:.1f}s"
    )
    print(f"  wall time: {wall:.1f}s")
    if has_remote:
        print(f"  remote errors: {errors}; calls that skipped the remote layer: {skipped}")
        if errors or skipped:
            print(
                "redis-cache demo: the remote layer failed; workers fell back to memo and disk "
                "(run `redis-cache doctor`)"
            )
            return 1
    return 0
